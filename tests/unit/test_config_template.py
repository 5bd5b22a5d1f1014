"""The Go-template subset: what real configs use renders as upstream; bad input is a clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.config.template import node_values, render
from kairos.context import Context
from kairos.errors import ConfigError

VALUES: dict[str, Any] = {
    "MachineID": "0123456789abcdef",
    "Random": "RaNdOmStRiNg",
    "Values": {
        "product": {"name": "Standard PC (Q35 + ICH9, 2009)", "uuid": "4c4c-44"},
        "network": [{"name": "eth0", "macaddress": "52:54:00:12:34:56"}],
        "cpu": {"cores": 4, "model": "QEMU Virtual CPU"},
        "node": {"hostname": "box"},
        "empty": "",
        "tags": ["a", "b"],
    },
}


def r(text: str) -> str:
    return render(text, VALUES, "t.yaml")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # the forms in the upstream examples
        ("hostname: kairoslab-{{ trunc 4 .MachineID }}", "hostname: kairoslab-0123"),
        ('hostname: "kubevip-{{ trunc 4 .MachineID }}"', 'hostname: "kubevip-0123"'),
        ("kairos-{{ trunc 4 .Random }}", "kairos-RaNd"),
        # fields, pipelines, literals
        ("{{ .Values.product.uuid }}", "4c4c-44"),
        ("{{ .Values.cpu.cores }}", "4"),
        ("{{ .MachineID | trunc 6 | upper }}", "012345"),
        ("{{ .Random | lower }}", "randomstring"),
        ("{{ trunc -3 .MachineID }}", "def"),
        ("{{ trunc 100 .MachineID }}", "0123456789abcdef"),
        ('{{ replace " " "-" .Values.product.name | lower }}', "standard-pc-(q35-+-ich9,-2009)"),
        ('{{ default "none" .Values.empty }}', "none"),
        ('{{ .Values.empty | default "none" }}', "none"),
        ('{{ default "none" .Values.node.hostname }}', "box"),
        ('{{ default "x" .Values.absent }}', "x"),
        ('{{ quote "a\\"b" }}', '"a\\"b"'),
        ("{{ .Values.node.hostname | quote }}", '"box"'),
        ("{{ squote .Values.node.hostname }}", "'box'"),
        ('{{ trim "  x  " }}', "x"),
        ('{{ printf "%s-%03d" .Values.node.hostname 7 }}', "box-007"),
        ("{{ index .Values.network 0 | len }}", "2"),
        ('{{ (index .Values.network 0).macaddress | replace ":" "" }}', "525400123456"),
        ('{{ join "," .Values.tags }}', "a,b"),
        ("{{ .Values.tags }}", "[a b]"),
        ("{{ add 1 2 3 }}", "6"),
        ("{{ 1.5 }} {{ true }} {{ 0x10 }}", "1.5 true 16"),
        ("{{ `raw \\n` }}", "raw \\n"),
        ('{{ "tab\\there" }}', "tab\there"),
        ("{{ .Values.absent }}", "<no value>"),
        ("{{ upper (trunc 2 .Random) }}", "RA"),
        # trimming and comments
        ("a  {{- .Values.node.hostname -}}  b", "aboxb"),
        ("a\n  {{- /* why */ -}}\n  b", "ab"),
        ("{{- 3 }} {{ -3 -}} !", "3 -3!"),
        # control flow
        ('{{ if eq .Values.node.hostname "box" }}yes{{ else }}no{{ end }}', "yes"),
        ("{{ if .Values.empty }}a{{ else if .Values.cpu }}b{{ else }}c{{ end }}", "b"),
        ("{{ if not .Values.absent }}missing{{ end }}", "missing"),
        ("{{ if and .Values.cpu .Values.empty }}x{{ else }}y{{ end }}", "y"),
        ("{{ range .Values.tags }}<{{ . }}>{{ end }}", "<a><b>"),
        ("{{ range $i, $n := .Values.network }}{{ $i }}:{{ $n.name }}{{ end }}", "0:eth0"),
        ("{{ range .Values.absent }}x{{ else }}none{{ end }}", "none"),
        ("{{ with .Values.product }}{{ .uuid }}{{ end }}", "4c4c-44"),
        ("{{if\n.Values.empty}}a{{else\tif .Values.cpu}}b{{end}}", "b"),
        ("{{ $h := .Values.node.hostname }}{{ $h }}-{{ $.MachineID | trunc 2 }}", "box-01"),
        ("{{ range .Values.tags }}{{ $.Values.node.hostname }}{{ end }}", "boxbox"),
        # and/or stop at the deciding argument, as in Go: a guard protects a missing map
        ("{{ if and .Values.absent .Values.absent.x }}y{{ else }}n{{ end }}", "n"),
        ("{{ or .Values.node.hostname .Values.absent.x }}", "box"),
        ('{{ .Values.empty | or "fallback" }}', "fallback"),
    ],
)
def test_renders_like_go_templates(template: str, expected: str) -> None:
    assert r(template) == expected


def test_only_actions_change() -> None:
    text = "#cloud-config\nstages:\n  boot:\n    - commands: ['echo {{ .MachineID }}']\n"
    assert r(text) == text.replace("{{ .MachineID }}", "0123456789abcdef")


@pytest.mark.parametrize(
    ("template", "line", "words"),
    [
        ("a: 1\nb: {{ frobnicate .MachineID }}\n", 2, 'function "frobnicate" not defined'),
        # Checked when parsing, as Go does: an untaken branch is no hiding place.
        ("{{ if false }}\n\n{{ nope }}{{ end }}", 3, 'function "nope" not defined'),
        ("x\ny: {{ .MachineID\n", 2, "unclosed action"),
        ("{{ if .MachineID }}\nno end", 1, "{{if}} without {{end}}"),
        ("a\n{{ end }}", 2, "{{end}} without a block"),
        ("{{ else }}", 1, "{{else}} without"),
        ("{{ .MachineID | .Random }}", 1, "can't give argument to non-function"),
        ("{{ .Values.absent.deeper }}", 1, "no field 'deeper'"),
        ("{{ .MachineID.x }}", 1, "can't evaluate field x"),
        ("{{ (trunc 2 .Random }}", 1, "unclosed '('"),
        ("{{ }}", 1, "empty action"),
        ('{{ "unterminated }}', 1, "unexpected"),
        ("{{ $x }}", 1, "undefined variable $x"),
        ("{{ div 1 0 }}", 1, "division by zero"),
        ('{{ required "uuid needed" .Values.absent }}', 1, "uuid needed"),
        ('{{ template "x" }}', 1, "not supported"),
        ("{{ trunc }}", 1, "wrong number or type of arguments for trunc"),
        ("{{ and }}", 1, "wrong number or type of arguments for and"),
        ('{{ repeat 99999999 "ab" }}', 1, "result larger than"),
        ('{{ printf "%99999999d" 1 }}', 1, "result larger than"),
        ("{{ range 99999999 }}x{{ end }}", 1, "more than 100000 iterations"),
        ("{{ range 1000 }}{{ range 1000 }}{{ end }}{{ end }}", 1, "more than 100000 range"),
        ('{{ regexMatch "(" "x" }}', 1, "bad regular expression"),
        ("{{ index .Values.tags 5 }}", 1, "index out of range"),
    ],
)
def test_bad_templates_name_file_and_line(template: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        render(template, VALUES, "/oem/bad.yaml")
    err = info.value
    assert err.message.startswith(f"/oem/bad.yaml:{line}: template: ")
    assert words in err.message
    assert err.message.endswith(".")
    assert err.problems and err.problems[0].startswith(f"/oem/bad.yaml:{line}:")


def test_unknown_function_hint_lists_the_supported_ones() -> None:
    with pytest.raises(ConfigError) as info:
        render("{{ toYaml . }}", VALUES, "f.yaml")
    assert info.value.hint is not None
    assert "trunc" in info.value.hint and "default" in info.value.hint


def test_nothing_is_evaluated_as_python() -> None:
    with pytest.raises(ConfigError):
        render("{{ __import__ }}", VALUES, "f.yaml")
    assert render("{{ `__import__('os')` }}", VALUES, "f") == "__import__('os')"


# ---------------------------------------------------------------- properties


@given(st.text())
def test_text_without_actions_is_unchanged(text: str) -> None:
    if "{{" not in text:
        assert render(text, VALUES, "t") == text


@given(st.text())
def test_a_field_renders_to_its_value(value: str) -> None:
    assert render("<{{ .X }}>", {"X": value}, "t") == f"<{value}>"


@given(st.text(), st.integers(-20, 20))
def test_trunc_matches_sprig(value: str, n: int) -> None:
    expected = value[:n] if n >= 0 else (value[len(value) + n :] if len(value) + n > 0 else value)
    assert render(f"{{{{ trunc {n} .X }}}}", {"X": value}, "t") == expected
    assert render(f"{{{{ .X | trunc {n} }}}}", {"X": value}, "t") == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",))))
def test_string_literals_round_trip_through_quote(value: str) -> None:
    # quote produces a Go string literal; rendering that literal gives the value back.
    literal = render("{{ quote .X }}", {"X": value}, "t")
    assert render("{{ " + literal + " }}", {}, "t") == value


_FRAGMENTS = st.sampled_from(
    (
        "{{",
        "}}",
        "{{-",
        "-}}",
        " ",
        ".X",
        ".Values.a",
        "$",
        "$x",
        ":=",
        "|",
        "(",
        ")",
        "if",
        "else",
        "end",
        "range",
        "with",
        "trunc",
        "1",
        "-2",
        '"s"',
        "`r`",
        "printf",
        "%d",
        "index",
        "and",
        "or",
        "not",
        "default",
        "eq",
        "\n",
        ",",
        "/*",
        "*/",
        "nil",
        "len",
        "div",
        "0",
        "quote",
        "\\",
        '"',
        "required",
        "substr",
        "indent",
        "join",
        "dict",
    )
)


@settings(max_examples=500)
@given(st.lists(_FRAGMENTS, max_size=25).map(" ".join))
def test_any_input_renders_or_fails_cleanly(text: str) -> None:
    values = {"X": "abc", "Values": {"a": [1, 2], "b": {"c": "d"}}}
    try:
        assert isinstance(render(text, values, "f.yaml"), str)
    except ConfigError as exc:
        assert exc.message.startswith("f.yaml:") and exc.problems


# ---------------------------------------------------------------- node values


def test_node_values_read_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/machine-id").write_text("feedface00\n")
    (tmp_path / "etc/hostname").write_text("node-7\n")
    (tmp_path / "etc/os-release").write_text(
        'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian 12"\n'
    )
    dmi = tmp_path / "sys/class/dmi/id"
    dmi.mkdir(parents=True)
    (dmi / "product_name").write_text("KVM\n")
    (dmi / "product_uuid").write_text("1234-abcd\n")
    nic = tmp_path / "sys/class/net/ens3"
    (nic / "device").mkdir(parents=True)
    (nic / "address").write_text("52:54:00:aa:bb:cc\n")
    (tmp_path / "sys/class/net/lo").mkdir()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU\n"
        "physical id\t: 0\ncore id\t: 0\n\nprocessor\t: 1\nphysical id\t: 0\ncore id\t: 1\n"
    )
    values = node_values(Context(root=tmp_path))
    assert values["MachineID"] == "feedface00"
    assert len(values["Random"]) == 32 and values["Random"].isalpha()
    v = values["Values"]
    assert v["node"]["hostname"] == "node-7"
    assert v["os"]["vendor"] == "debian" and v["os"]["version"] == "12"
    assert v["product"]["name"] == "KVM" and v["product"]["uuid"] == "1234-abcd"
    assert v["network"] == [{"name": "ens3", "macaddress": "52:54:00:aa:bb:cc"}]
    assert v["cpu"] == {
        "vendor": "GenuineIntel",
        "model": "Test CPU",
        "threads": 2,
        "cores": 2,
        "cpus": 1,
    }
    text = "{{ .Values.product.name | lower }}-{{ trunc 4 .MachineID }}"
    assert render(text, values, "t") == "kvm-feed"


def test_node_values_on_an_empty_root(tmp_path: Path) -> None:
    values = node_values(Context(root=tmp_path))
    assert values["MachineID"] == ""
    assert values["Values"]["network"] == []
    # Not the build host's name: the node under --root has none.
    assert values["Values"]["node"]["hostname"] == ""
    assert render("x{{ trunc 4 .MachineID }}", values, "t") == "x"
