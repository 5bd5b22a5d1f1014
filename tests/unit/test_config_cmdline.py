"""Kernel command line -> cloud-config, as upstream's collector reads it."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kairos.config.cmdline import parse, parse_key, split_words
from kairos.config.schema import KNOWN_TOP_LEVEL_KEYS

REAL = (
    "BOOT_IMAGE=(loop0)/boot/vmlinuz console=tty1 console=ttyS0,115200 root=LABEL=COS_ACTIVE "
    "cos-img/filename=/cOS/active.img panic=5 rd.neednet=0 rd.cos.oemlabel=COS_OEM "
    "net.ifnames=1 selinux=0 rd.emergency=reboot rd.shell=0 systemd.crash_reboot=yes quiet splash"
)


def test_a_real_boot_cmdline_carries_no_config() -> None:
    assert parse(REAL) == {}


def test_dotted_paths_for_known_keys() -> None:
    text = REAL + " install.device=/dev/vda install.auto=true users[0].name=kairos"
    assert parse(text) == {
        "install": {"device": "/dev/vda", "auto": True},
        "users": [{"name": "kairos"}],
    }


def test_config_url_forms() -> None:
    assert parse("config_url=http://10.0.0.1/c.yaml?a=b") == {
        "config_url": "http://10.0.0.1/c.yaml?a=b"
    }
    assert parse("kairos.config_url=http://h/x=y") == {"config_url": "http://h/x=y"}
    assert parse("cos.setup=http://legacy/c.yaml") == {"config_url": "http://legacy/c.yaml"}


def test_kairos_config_key_value() -> None:
    text = (
        "kairos.config=install.device=/dev/sda kairos.config=users.0.name=kairos "
        'kairos.config="hostname=my box" kairos.config=install.reboot'
    )
    assert parse(text) == {
        "install": {"device": "/dev/sda", "reboot": True},
        "users": [{"name": "kairos"}],
        "hostname": "my box",
    }


def test_cos_setup_with_equals_is_a_key_value() -> None:
    assert parse("cos.setup=install.device=/dev/vdb") == {"install": {"device": "/dev/vdb"}}


def test_kairos_owned_words_win_over_generic_ones() -> None:
    text = "install.device=/dev/generic kairos.config=install.device=/dev/owned install.auto=true"
    assert parse(text) == {"install": {"device": "/dev/owned", "auto": True}}


def test_later_words_win() -> None:
    assert parse("install.device=/dev/a install.device=/dev/b") == {"install": {"device": "/dev/b"}}


def test_unknown_top_level_keys_are_dropped() -> None:
    assert parse("foo.bar=1 rd.cos.disable kairos.reset install.auto") == {
        "install": {"auto": True}
    }


def test_bare_flags_only_for_boolean_keys() -> None:
    assert parse("debug strict hostname install") == {"debug": True, "strict": True}


def test_quoting_as_the_kernel_passes_it() -> None:
    assert parse('stages.boot[0].commands[0]="echo hi > /run/x"') == {
        "stages": {"boot": [{"commands": ["echo hi > /run/x"]}]}
    }


def test_unbalanced_quote_does_not_fail() -> None:
    assert parse('install.device=/dev/vda console="ttyS0') == {"install": {"device": "/dev/vda"}}
    assert split_words('a="b c') == ['a="b', "c"]


def test_known_keys_come_from_the_schema() -> None:
    assert {"install", "users", "stages", "config_url", "k3s"} <= KNOWN_TOP_LEVEL_KEYS
    assert parse("custom.x=1", known={"custom"}) == {"custom": {"x": "1"}}


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a", ("a",)),
        ("a.b[0].c", ("a", "b", 0, "c")),
        ("a.b.0.c", ("a", "b", 0, "c")),
        ("a[1][2]", ("a", 1, 2)),
        ("k3s-agent.enabled", ("k3s-agent", "enabled")),
        ("", None),
        ("a..b", None),
        (".a", None),
        ("a.", None),
        ("a[x]", None),
        ("a[99999999]", None),
    ],
)
def test_parse_key(key: str, path: tuple[Any, ...] | None) -> None:
    assert parse_key(key) == path


# Any nested map of string leaves under known keys survives the trip through words.
_name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=6).filter(
    lambda s: s[0] not in "-_"
)
_leaf = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/:._-@ ", min_size=1, max_size=12)
_leaf = _leaf.filter(lambda s: s.strip() == s and s not in ("true", "false"))
_tree = st.recursive(_leaf, lambda inner: st.dictionaries(_name, inner, min_size=1, max_size=3))


def _words(prefix: str, value: Any) -> list[str]:
    if isinstance(value, dict):
        return [w for k, v in value.items() for w in _words(f"{prefix}.{k}", v)]
    return [f'{prefix}="{value}"' if " " in value else f"{prefix}={value}"]


@given(st.dictionaries(st.sampled_from(["install", "k3s", "p2p", "kcrypt"]), _tree, max_size=3))
def test_dotted_words_round_trip(config: dict[str, Any]) -> None:
    config = {k: v for k, v in config.items() if isinstance(v, dict)}
    words = [w for k, v in config.items() for w in _words(k, v)]
    assert parse(" ".join([REAL, *words])) == config
    # The same words, written with shell quoting, parse the same way.
    assert parse(" ".join(shlex.quote(w) for w in words)) == config


_PIECES = st.sampled_from(
    (
        "install",
        "users",
        "stages",
        ".",
        "[0]",
        "[3]",
        "=",
        '"',
        "'",
        " ",
        "x",
        "kairos.config=",
        "cos.setup=",
        "kairos.config_url=",
        "true",
        "\\",
        "[",
        "]",
        "0",
    )
)


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_any_cmdline_parses_to_a_map(text: str) -> None:
    result = parse(text)
    assert isinstance(result, dict)
    assert all(isinstance(k, str) for k in result)
