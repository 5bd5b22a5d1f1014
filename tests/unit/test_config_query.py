"""`config get` key paths."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.config.query import get, parse_query
from kairos.errors import KairosError

DATA: dict[str, Any] = {
    "install": {"device": "/dev/vda", "auto": True},
    "users": [{"name": "kairos", "groups": ["admin"]}, {"name": "second"}],
    "k3s-agent": {"enabled": False},
    "a.b": 1,
}


@pytest.mark.parametrize(
    ("query", "value"),
    [
        ("install.device", "/dev/vda"),
        (".install.device", "/dev/vda"),
        ("install", {"device": "/dev/vda", "auto": True}),
        ("users[0].name", "kairos"),
        (".users[1].name", "second"),
        ("users[-1].name", "second"),
        ("users[0].groups[0]", "admin"),
        ("k3s-agent.enabled", False),
        ('"a.b"', 1),
        (".", DATA),
    ],
)
def test_get(query: str, value: Any) -> None:
    assert get(DATA, query) == value


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("install.nope", "install.nope: key not set in the merged config."),
        ("nope", "nope: key not set in the merged config."),
        ("users[5].name", "users[5]: no such item (the list has 2)."),
        ("install.device.x", "install.device.x: install.device is not a map."),
        ("users.name", "users.name: users is not a map."),
        ("install[0]", "install[0]: install is not a list."),
        ("a..b", "'a..b': not a key path (at '..b')."),
        ("users[x]", "'users[x]': not a key path (at '[x]')."),
    ],
)
def test_missing_keys_are_clear_errors(query: str, message: str) -> None:
    with pytest.raises(KairosError) as info:
        get(DATA, query)
    assert info.value.message == message
    assert info.value.hint


def test_parse_query() -> None:
    assert parse_query("stages.boot[0].files[1].path") == ("stages", "boot", 0, "files", 1, "path")
