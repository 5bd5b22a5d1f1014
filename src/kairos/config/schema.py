"""The cloud-config schema, declared once as JSON-Schema-shaped data.

`kairos-agent print-schema` prints it (draft 2020-12) and `validate` checks configs against it,
so the two can never disagree. Key names follow upstream Kairos (`sdk/schema`, the agent's
config structs) and yip (`pkg/schema/schema.go`, the cloud-init loader).

Two conventions of the Go decoder upstream uses are written into the data: every property may
be `null` (an empty YAML value decodes to the zero value), and an object's unknown keys are
reported as warnings, not errors (`additionalProperties: false` is read as "warn").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Schema = dict[str, Any]

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# Encodings accepted for file contents (yip `files`, cloud-init `write_files`).
ENCODINGS = (
    "",
    "b64",
    "base64",
    "gz",
    "gzip",
    "gz+base64",
    "gzip+base64",
    "gz+b64",
    "gzip+b64",
)

# Stages the system runs; any other name may still be run with `run-stage`.
SYSTEM_STAGES = ("rootfs", "initramfs", "fs", "boot", "network", "reconcile")
HOOK_STAGES = (
    "kairos-install.pre",
    "kairos-install.after",
    "before-install",
    "after-install-chroot",
    "after-install",
    "before-upgrade",
    "after-upgrade-chroot",
    "after-upgrade",
    "before-reset",
    "after-reset-chroot",
    "after-reset",
    "kairos-uki-install.pre",
    "kairos-uki-install.after",
    "kairos-uki-upgrade.pre",
    "kairos-uki-upgrade.after",
    "kairos-uki-reset.pre",
    "kairos-uki-reset.after",
    "kairos-agent.bootstrap",
)
KNOWN_STAGES: frozenset[str] = frozenset(
    name + suffix for name in (*SYSTEM_STAGES, *HOOK_STAGES) for suffix in ("", ".before", ".after")
)

GRUB_OPTION_KEYS = (
    "next_entry",
    "saved_entry",
    "default_menu_entry",
    "extra_cmdline",
    "extra_active_cmdline",
    "extra_passive_cmdline",
    "extra_recovery_cmdline",
    "default_fallback",
)


# --- helpers: each returns a fresh JSON-Schema fragment ------------------------------------


def _with(schema: Schema, description: str, extra: Mapping[str, Any]) -> Schema:
    if description:
        schema["description"] = description
    schema.update(extra)
    return schema


def string(description: str = "", **extra: Any) -> Schema:
    return _with({"type": "string"}, description, extra)


def boolean(description: str = "") -> Schema:
    return _with({"type": "boolean"}, description, {})


def integer(description: str = "", minimum: int | None = 0, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    return _with(schema, description, extra)


def array(items: Schema, description: str = "", **extra: Any) -> Schema:
    return _with({"type": "array", "items": items}, description, extra)


def strings(description: str = "") -> Schema:
    return array(string(), description)


def scalar(description: str = "") -> Schema:
    """A value the Go decoder reads into a string field: any YAML scalar."""
    return _with({"type": ["string", "integer", "number", "boolean"]}, description, {})


def nullable(schema: Schema) -> Schema:
    """Also accept `null`: an empty YAML value decodes to the zero value upstream."""
    out = dict(schema)  # only the top level changes; helpers build fresh fragments
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"] if kind != "null" else kind
    elif isinstance(kind, list) and "null" not in kind:
        out["type"] = [*kind, "null"]
    elif "anyOf" in out and {"type": "null"} not in out["anyOf"]:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    return out


def obj(
    properties: Mapping[str, Schema], description: str = "", required: Sequence[str] = ()
) -> Schema:
    """A map with known keys; unknown keys warn."""
    schema: Schema = {
        "type": "object",
        "properties": {key: nullable(value) for key, value in properties.items()},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return _with(schema, description, {})


def map_of(values: Schema, description: str = "") -> Schema:
    """A map with free keys (user names, sysctl keys...) and typed values; null is unset."""
    return _with({"type": "object", "additionalProperties": nullable(values)}, description, {})


def passthrough(description: str, kinds: Sequence[str] = ("object",)) -> Schema:
    """A block another part of the system owns: only its outer type is checked."""
    return _with({"type": list(kinds) if len(kinds) > 1 else kinds[0]}, description, {})


def any_of(*alternatives: Schema, description: str = "") -> Schema:
    return _with({"anyOf": list(alternatives)}, description, {})


def enum(values: Sequence[str], description: str = "") -> Schema:
    return _with({"type": "string", "enum": list(values)}, description, {})


# --- shared pieces --------------------------------------------------------------------------


def _permissions() -> Schema:
    return integer("file mode, written in octal (0644)")


def _owner(what: str) -> Schema:
    return integer(f"{what} id; use owner_string for a name")


def _grub_options() -> Schema:
    # The agent writes every key into the GRUB environment, so other keys are not ignored:
    # they are typed here, and only likely typos of the known ones warn (semantic tier).
    schema = obj(
        {key: string() for key in GRUB_OPTION_KEYS},
        "GRUB environment variables written to /oem/grubenv",
    )
    schema["additionalProperties"] = nullable(scalar())
    return schema


def _image() -> Schema:
    return obj(
        {
            "uri": string("image source: oci:REF, ocifile:PATH, dir:PATH, file:PATH"),
            "source": string("older name of `uri`"),
            "size": integer("image size in MiB (0: measured)"),
            "fs": string("image filesystem"),
            "label": string("filesystem label of the image"),
        },
        "a system image",
    )


def _partition(description: str) -> Schema:
    return obj(
        {
            "name": string("GPT partition name"),
            "label": string("filesystem label"),
            "size": integer("size in MiB (0: the rest of the disk)"),
            "fs": string("filesystem: ext2, ext3, ext4, xfs, btrfs, vfat or none"),
        },
        description,
    )


def _bundles(description: str) -> Schema:
    return passthrough(description, ("array",))


def _user_properties() -> dict[str, Schema]:
    return {
        "name": string("user name"),
        "passwd": string("password, plain or crypted"),
        "lock_passwd": boolean("lock the password"),
        "lockPasswd": boolean("upstream schema spelling of lock_passwd"),
        "groups": any_of(strings(), string(), description="supplementary groups"),
        "primary_group": string(),
        "ssh_authorized_keys": strings("public keys, or github:USER / gitlab:USER"),
        "shell": string(),
        "homedir": string(),
        "uid": any_of(string(), integer()),
        "gid": any_of(string(), integer()),
        "gecos": string(),
        "no_create_home": boolean(),
        "no_user_group": boolean(),
        "system": boolean("create a system account"),
        "no_log_init": boolean(),
    }


def _root_user() -> Schema:
    return obj(_user_properties(), "a user to create (boot stage)", required=("name",))


def _stage_user() -> Schema:
    return obj(_user_properties(), "a user to create; the map key is its name")


def _file_entry(cloud_init: bool) -> Schema:
    props: dict[str, Schema] = {
        "path": string("absolute path of the file"),
        "content": string(),
        "encoding": enum(ENCODINGS, "how `content` is encoded"),
    }
    if cloud_init:
        props["owner"] = string("owner as USER or USER:GROUP")
        props["permissions"] = any_of(
            string(pattern="^0?[0-7]{3,4}$"), _permissions(), description="octal mode as text"
        )
    else:
        props.update(
            permissions=_permissions(),
            owner=_owner("user"),
            group=_owner("group"),
            owner_string=string("owner as USER or USER:GROUP"),
        )
    return obj(props, "a file to write", required=("path",))


def _step() -> Schema:
    """One yip step: conditionals first, then actions in the executor's fixed order."""
    entity = obj({"path": string(), "entity": string()}, "an /etc/passwd-like entity")
    return obj(
        {
            "name": string("step name; `after:` refers to it as <file or config name>.<name>"),
            "after": array(
                obj({"name": string()}, "a step that must run first", required=("name",)),
                "steps this one waits for",
            ),
            "if": string("shell condition; the step runs when it exits 0"),
            "node": string("hostname regular expression"),
            "only_os": string("regular expression on the OS name"),
            "only_os_version": string("regular expression on the OS version"),
            "only_arch": string("regular expression on the architecture"),
            "only_service_manager": enum(("systemd", "openrc")),
            "if_files": obj(
                {"any": strings(), "all": strings(), "none": strings()},
                "run only if these files exist",
            ),
            "dns": obj(
                {
                    "nameservers": strings(),
                    "search": strings(),
                    "options": strings(),
                    "path": string("resolv.conf path"),
                }
            ),
            "downloads": array(
                obj(
                    {
                        "path": string(),
                        "url": string(),
                        "permissions": _permissions(),
                        "owner": _owner("user"),
                        "group": _owner("group"),
                        "owner_string": string(),
                        "timeout": integer("seconds"),
                    },
                    required=("url",),
                )
            ),
            "git": obj(
                {
                    "url": string(),
                    "path": string(),
                    "branch": string(),
                    "branch_only": boolean(),
                    "auth": obj(
                        {
                            "username": string(),
                            "password": string(),
                            "private_key": string(),
                            "insecure": boolean(),
                            "public_key": string(),
                        }
                    ),
                }
            ),
            "ensure_entities": array(entity),
            "directories": array(
                obj(
                    {
                        "path": string(),
                        "permissions": _permissions(),
                        "owner": integer("user id"),
                        "group": integer("group id"),
                    },
                    required=("path",),
                )
            ),
            "files": array(_file_entry(cloud_init=False)),
            "commands": strings("shell commands, run with sh"),
            "delete_entities": array(entity),
            "hostname": string(),
            "sysctl": map_of(scalar(), "kernel parameters"),
            "users": map_of(_stage_user(), "users by name"),
            "authorized_keys": map_of(strings(), "ssh keys by user name"),
            "modules": strings("kernel modules to load"),
            "timesyncd": map_of(scalar(), "systemd-timesyncd settings"),
            "systemctl": obj(
                {
                    "enable": strings(),
                    "disable": strings(),
                    "start": strings(),
                    "mask": strings(),
                    "overrides": array(
                        obj(
                            {"service": string(), "name": string(), "content": string()},
                            "a unit drop-in",
                            required=("service",),
                        )
                    ),
                }
            ),
            "environment": map_of(scalar(), "variables written to environment_file"),
            "environment_file": string("default /etc/environment"),
            "systemd_firstboot": map_of(scalar()),
            "datasource": obj(
                {"providers": strings(), "path": string(), "userdata_name": string()},
                "pull user-data from cloud providers",
            ),
            "layout": obj(
                {
                    "device": obj(
                        {
                            "label": string("filesystem or partition label of the disk"),
                            "path": string("/dev/... or script://COMMAND"),
                            "init_disk": boolean("write a new partition table first"),
                            "disk_name": string(),
                        }
                    ),
                    "expand_partition": obj({"size": integer("MiB, 0: all free space")}),
                    "add_partitions": array(
                        obj(
                            {
                                "fsLabel": string(),
                                "pLabel": string(),
                                "size": integer("MiB, 0: all free space"),
                                "filesystem": string("default ext2"),
                                "bootable": boolean(),
                            }
                        )
                    ),
                },
                "partition a disk",
            ),
            "package_pins": passthrough("package version pins", ("object", "array")),
            "packages": obj(
                {
                    "install": strings(),
                    "remove": strings(),
                    "refresh": boolean(),
                    "upgrade": boolean(),
                }
            ),
            "dnf": passthrough("dnf settings"),
            "unpack_images": array(
                obj({"source": string(), "target": string(), "platform": string()})
            ),
        },
        "a stage step",
    )


# --- top-level blocks -----------------------------------------------------------------------


def _install() -> Schema:
    return obj(
        {
            "auto": boolean("install without pairing"),
            "device": string(
                "target disk: auto (or empty), /dev/..., /dev/disk/by-*/..., or script://COMMAND",
                pattern="^(|auto|/dev/.+|script://.+)$",
            ),
            "reboot": boolean("reboot when done"),
            "poweroff": boolean("power off when done"),
            "no-format": boolean("use existing labelled partitions"),
            "no_format": boolean("upstream schema spelling of no-format"),
            "force": boolean(),
            "nousers": boolean("install without an admin user"),
            "source": string("oci:REF, ocifile:PATH, dir:PATH or file:PATH"),
            "image": string("container image to install"),
            "partitions": obj(
                {
                    name: _partition(f"the {name} partition")
                    for name in ("oem", "recovery", "state", "persistent", "efi")
                }
            ),
            "extra-partitions": array(_partition("an extra partition"), "created after persistent"),
            "system": _image(),
            "passive": _image(),
            "recovery-system": _image(),
            "grub-entry-name": string("GRUB menu name"),
            "grub_options": _grub_options(),
            "bundles": _bundles("bundles to install"),
            "encrypted_partitions": strings("partition labels to encrypt"),
            "skip_copy_kcrypt_plugin": boolean(),
            "skip_copy_kairos_efi": boolean(),
            "env": passthrough("environment for the install", ("array", "object")),
            "bind_mounts": strings("persistent bind mounts"),
            "ephemeral_mounts": strings("tmpfs-backed paths"),
            "extra-dirs-rootfs": strings(),
            "ssh_hardening": boolean("enforce key-only SSH on the installed system"),
            "allow-insecure-registries": boolean(),
            "skip-entries": strings("UKI entries to skip"),
            "oem_files": array(
                obj(
                    {"name": string(pattern="^[^/]+$"), "content": string()},
                    required=("name", "content"),
                ),
                "cloud-configs written to /oem",
            ),
            "selinux": obj(
                {"enabled": boolean(), "mode": enum(("enforcing", "permissive"))},
            ),
        },
        "unattended installation",
    )


def _upgrade() -> Schema:
    return obj(
        {
            "entry": enum(("cos", "recovery"), "boot entry to upgrade"),
            "recovery": boolean("upgrade the recovery system"),
            "system": _image(),
            "recovery-system": _image(),
            "grub-entry-name": string(),
            "reboot": boolean(),
            "poweroff": boolean(),
            "extra-dirs-rootfs": strings(),
            "allow-insecure-registries": boolean(),
            "excluded-paths": strings(),
        },
        "kairos-agent upgrade",
    )


def _reset() -> Schema:
    return obj(
        {
            "reset-persistent": boolean("format the persistent partition (default true)"),
            "reset-oem": boolean("format the oem partition"),
            "reboot": boolean(),
            "poweroff": boolean(),
            "grub-entry-name": string(),
            "tty": string(),
            "extra-dirs-rootfs": strings(),
            "system": _image(),
        },
        "kairos-agent reset",
    )


def _cloud_init_compat() -> dict[str, Schema]:
    return {
        "write_files": array(_file_entry(cloud_init=True), "cloud-init: files (boot stage)"),
        "runcmd": array(any_of(string(), strings()), "cloud-init: commands (boot stage)"),
        "bootcmd": array(any_of(string(), strings()), "cloud-init: early commands"),
        "ssh_authorized_keys": strings("cloud-init: keys for the default user"),
        "growpart": obj(
            {"mode": string(), "devices": strings(), "ignore_growroot_disabled": boolean()},
            "cloud-init: grow partitions",
        ),
        "ssh_pwauth": boolean("cloud-init: allow ssh password login"),
    }


def _root_properties() -> dict[str, Schema]:
    props: dict[str, Schema] = {
        "install": _install(),
        "upgrade": _upgrade(),
        "reset": _reset(),
        "users": array(_root_user(), "users to create"),
        "stages": map_of(array(_step()), "steps to run, by stage name"),
        "name": string("name of this config; `after:` references start with it"),
        "hostname": string("hostname (initramfs stage)"),
        "config_url": string("URL of a config to fetch and merge"),
        "options": passthrough("various options", ("array", "object")),
        "env": passthrough("environment as KEY=VALUE", ("array", "object")),
        "debug": boolean(),
        "strict": boolean("make config warnings errors"),
        "cloud-init-paths": strings("more directories to run stages from"),
        "eject-cd": boolean(),
        "fail_on_bundles_errors": boolean(),
        "bundles": _bundles("bundles to install at runtime"),
        "grub_options": _grub_options(),
        "cosign": boolean(),
        "verify": boolean(),
        "cosign-key": string(),
        "arch": string(),
        "platform": string(),
        "squash-compression": strings(),
        "squash-no-compression": boolean(),
        "uki-max-entries": integer(),
        "bind-pcrs": strings(),
        "bind-public-pcrs": strings(),
        "logs": passthrough("log collection"),
        "extensions": passthrough("system extensions"),
        "boot-assessment": passthrough(
            "boot assessment after upgrades: tries (boots the new system gets, default 3),"
            " timeout (seconds for the boot-assessment stage checks, default 300)"
        ),
        "kcrypt": passthrough("partition encryption"),
        "phonehome": passthrough("fleet registration"),
        "k3s": passthrough("k3s server"),
        "k3s-agent": passthrough("k3s agent"),
        "k0s": passthrough("k0s controller"),
        "k0s-worker": passthrough("k0s worker"),
        "p2p": passthrough("peer-to-peer cluster coordination"),
        "kairos": passthrough("older name of p2p"),
        "kubevip": passthrough("kube-vip"),
        "cluster": passthrough("kubeadm provider"),
    }
    props.update(_cloud_init_compat())
    return props


KNOWN_TOP_LEVEL_KEYS: frozenset[str] = frozenset(_root_properties())


def json_schema() -> Schema:
    """The whole cloud-config as a draft 2020-12 JSON Schema (a fresh copy each call)."""
    root = obj(_root_properties(), "Kairos cloud-config")
    return {
        "$schema": DRAFT,
        "$id": "https://kairos.io/cloud-config.json",
        "title": "Kairos cloud-config",
        "$comment": "kairos-agent validate reports keys outside `properties` as warnings; "
        "`null` stands for an unset value, as in upstream's decoder.",
        **root,
    }
