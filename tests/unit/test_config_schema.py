"""The printed JSON Schema: valid draft 2020-12, complete, and usable on its own."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kairos.cli import main
from kairos.config.jsonschema_lite import Severity, check
from kairos.config.schema import KNOWN_TOP_LEVEL_KEYS, json_schema
from kairos.config.yamlload import load
from tests.conftest import EXAMPLES

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
# Keywords of the draft 2020-12 core, applicator, validation and meta-data vocabularies that
# the schema may use; anything else would be silently ignored by other validators.
KEYWORDS = {
    "$schema", "$id", "$comment", "title", "description", "default", "examples",
    "type", "enum", "const", "pattern", "minimum", "maximum", "minItems", "maxItems",
    "properties", "additionalProperties", "required", "items", "anyOf", "oneOf", "allOf",
}  # fmt: skip
JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


@pytest.fixture(scope="module")
def printed() -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["print-schema"]) == 0
    data: dict[str, Any] = json.loads(out.getvalue())
    return data


def subschemas(schema: dict[str, Any], where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    yield where, schema
    for key, sub in schema.get("properties", {}).items():
        yield from subschemas(sub, f"{where}/properties/{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from subschemas(schema[key], f"{where}/{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(key, ())):
            yield from subschemas(sub, f"{where}/{key}/{i}")


def step(schema: dict[str, Any]) -> dict[str, Any]:
    stages = schema["properties"]["stages"]
    result: dict[str, Any] = stages["additionalProperties"]["items"]
    return result


def test_print_schema_is_draft_2020_12(printed: dict[str, Any]) -> None:
    assert printed["$schema"] == DRAFT_2020_12
    assert printed["type"] == "object"
    count = 0
    for where, sub in subschemas(printed):
        count += 1
        assert set(sub) <= KEYWORDS, (where, set(sub) - KEYWORDS)
        kinds = sub.get("type", [])
        kinds = [kinds] if isinstance(kinds, str) else kinds
        assert set(kinds) <= JSON_TYPES, where
        if "pattern" in sub:
            re.compile(sub["pattern"])
        if "enum" in sub:
            assert isinstance(sub["enum"], list) and sub["enum"], where
        for name in sub.get("required", ()):
            assert name in sub.get("properties", {}), (where, name)
        if "additionalProperties" in sub:
            assert isinstance(sub["additionalProperties"], bool | dict), where
    assert count > 200  # the whole config is described, not a stub


def test_schema_is_a_fresh_copy_each_time() -> None:
    first = json_schema()
    first["properties"].clear()
    assert json_schema()["properties"]


def test_top_level_keys(printed: dict[str, Any]) -> None:
    assert set(printed["properties"]) == KNOWN_TOP_LEVEL_KEYS
    expected = {
        "install", "upgrade", "reset", "users", "stages", "name", "hostname", "config_url",
        "options", "grub_options", "strict", "debug", "fail_on_bundles_errors", "bundles",
        "k3s", "k3s-agent", "k0s", "p2p", "kcrypt", "kubevip", "boot-assessment", "env",
        "cloud-init-paths", "eject-cd", "write_files", "runcmd", "bootcmd", "growpart",
        "ssh_authorized_keys", "ssh_pwauth", "kairos",
    }  # fmt: skip
    assert expected <= KNOWN_TOP_LEVEL_KEYS


def test_install_upgrade_reset_keys(printed: dict[str, Any]) -> None:
    install = printed["properties"]["install"]["properties"]
    for key in (
        "auto", "device", "reboot", "poweroff", "no-format", "force", "nousers", "source",
        "partitions", "extra-partitions", "bind_mounts", "ephemeral_mounts", "grub_options",
        "encrypted_partitions", "bundles", "skip_copy_kairos_efi", "grub-entry-name", "system",
        "recovery-system", "extra-dirs-rootfs", "ssh_hardening",
    ):  # fmt: skip
        assert key in install, key
    assert set(install["partitions"]["properties"]) == {
        "oem", "recovery", "state", "persistent", "efi",
    }  # fmt: skip
    grub = set(install["grub_options"]["properties"])
    assert {"next_entry", "saved_entry", "extra_cmdline", "default_menu_entry"} <= grub
    upgrade = printed["properties"]["upgrade"]["properties"]
    assert {"reboot", "poweroff", "recovery", "system", "recovery-system"} <= set(upgrade)
    reset = printed["properties"]["reset"]["properties"]
    assert {"reset-persistent", "reset-oem", "reboot", "poweroff", "system"} <= set(reset)


def test_every_step_type_is_described(printed: dict[str, Any]) -> None:
    keys = set(step(printed)["properties"])
    expected = {
        "dns", "downloads", "directories", "files", "commands", "hostname", "sysctl", "users",
        "authorized_keys", "modules", "timesyncd", "systemctl", "environment",
        "environment_file", "layout", "packages", "if", "node", "only_os", "only_os_version",
        "only_arch", "only_service_manager", "if_files", "name", "after", "git",
        "unpack_images", "datasource", "delete_entities", "ensure_entities", "dnf",
        "systemd_firstboot",
    }  # fmt: skip
    assert expected <= keys
    files = step(printed)["properties"]["files"]["items"]["properties"]
    assert {"path", "content", "encoding", "owner", "group", "owner_string", "permissions"} <= set(
        files
    )
    assert {"base64", "gzip", "gz+base64", "b64", "gzip+base64"} <= set(files["encoding"]["enum"])
    users = step(printed)["properties"]["users"]["additionalProperties"]["properties"]
    for key in (
        "passwd", "groups", "primary_group", "ssh_authorized_keys", "lock_passwd", "uid",
        "shell", "homedir", "no_create_home",
    ):  # fmt: skip
        assert key in users, key
    systemctl = step(printed)["properties"]["systemctl"]["properties"]
    assert {"enable", "disable", "start", "mask", "overrides"} <= set(systemctl)
    layout = step(printed)["properties"]["layout"]["properties"]
    assert {"device", "expand_partition", "add_partitions"} <= set(layout)
    packages = step(printed)["properties"]["packages"]["properties"]
    assert {"install", "remove", "refresh", "upgrade"} <= set(packages)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_printed_schema_validates_every_example(printed: dict[str, Any], path: Any) -> None:
    doc = load(path.read_text(), path.name)
    findings = check(doc.data, printed)
    assert [f for f in findings if f.severity is Severity.ERROR] == []


def test_printed_schema_catches_a_bad_config(printed: dict[str, Any]) -> None:
    doc = load("#cloud-config\nusers:\n  - name: 007\n", "x.yaml")
    findings = check(doc.data, printed)
    assert [(f.path, f.severity) for f in findings] == [(("users", 0, "name"), Severity.ERROR)]
