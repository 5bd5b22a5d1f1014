"""Turn one loaded YAML document into a StageFile: every problem found, with file:line.

yip ignores what it does not know and Go's decoder coerces scalars; we accept the same
inputs, turn type mistakes into `file:line: path: message` problems (the step is then not
run) and unknown keys into warnings, so a typo is visible instead of silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kairos.config.yamlload import HEADERS, Document
from kairos.stages.model import (
    Conditions,
    Directory,
    Dns,
    Download,
    Entity,
    EntityKind,
    File,
    Git,
    GitAuth,
    IfFiles,
    Layout,
    Override,
    Ownership,
    Packages,
    Partition,
    StageFile,
    Step,
    Systemctl,
    User,
)

P = tuple[str | int, ...]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")

UNSUPPORTED_KEYS = (
    "datasource",
    "package_pins",
    "unpack_images",
)
STEP_KEYS = frozenset(
    {
        "name",
        "after",
        "if",
        "node",
        "only_os",
        "only_os_version",
        "only_arch",
        "only_service_manager",
        "if_files",
        "dns",
        "downloads",
        "directories",
        "files",
        "commands",
        "hostname",
        "sysctl",
        "users",
        "authorized_keys",
        "modules",
        "timesyncd",
        "systemctl",
        "environment",
        "environment_file",
        "layout",
        "packages",
        "ensure_entities",
        "delete_entities",
        "systemd_firstboot",
        "git",
        *UNSUPPORTED_KEYS,
    }
)
_USER_KEYS = frozenset(
    {
        "name",
        "passwd",
        "lock_passwd",
        "groups",
        "primary_group",
        "homedir",
        "shell",
        "uid",
        "system",
        "no_create_home",
        "gecos",
        "ssh_authorized_keys",
        "no_user_group",
        "no_log_init",
    }
)


def dotted(path: P) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Reader:
    """Typed accessors that record a problem and return a safe default on bad input."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def where(self, path: P) -> str:
        line = self.doc.line_of(path)
        loc = f"{self.doc.source}:{line}" if line else self.doc.source
        return f"{loc}: {dotted(path)}"

    def error(self, path: P, message: str, hint: str = "") -> None:
        self.problems.append(f"{self.where(path)}: {message}" + (f" ({hint})" if hint else ""))

    def warn(self, path: P, message: str) -> None:
        self.warnings.append(f"{self.where(path)}: {message}")

    def string(self, m: Mapping[str, Any], key: str, path: P, default: str = "") -> str:
        value = m.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.error((*path, key), f"expected a string, got {type(value).__name__}")
            return default
        return str(value)

    def integer(self, m: Mapping[str, Any], key: str, path: P) -> int | None:
        value = m.get(key)
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            self.error((*path, key), "expected an integer, got a boolean")
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        self.error((*path, key), f"expected an integer, got {value!r}")
        return None

    def mode(self, m: Mapping[str, Any], key: str, path: P) -> int | None:
        value = m.get(key)
        if value is None:
            return None
        # YAML 1.1 reads 0644 as octal already; a quoted "0644" or "644" is octal text.
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                self.error((*path, key), f"expected an octal mode like 0644, got {value!r}")
                return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
            self.error((*path, key), f"expected a file mode like 0644, got {value!r}")
            return None
        return value

    def boolean(self, m: Mapping[str, Any], key: str, path: P) -> bool:
        value = m.get(key)
        if value is None:
            return False
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        self.error((*path, key), f"expected true or false, got {value!r}")
        return False

    def strings(self, m: Mapping[str, Any], key: str, path: P) -> tuple[str, ...]:
        value = m.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            self.error((*path, key), f"expected a list of strings, got {type(value).__name__}")
            return ()
        out = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.error((*path, key, i), f"expected a string, got {type(item).__name__}")
            else:
                out.append(str(item))
        return tuple(out)

    def str_map(self, m: Mapping[str, Any], key: str, path: P) -> dict[str, str]:
        value = m.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error((*path, key), f"expected a mapping, got {type(value).__name__}")
            return {}
        out = {}
        for k, v in value.items():
            if isinstance(v, bool):
                out[str(k)] = "true" if v else "false"
            elif isinstance(v, str | int | float):
                out[str(k)] = str(v)
            elif v is None:
                out[str(k)] = ""
            else:
                self.error((*path, key, str(k)), f"expected a scalar, got {type(v).__name__}")
        return out

    def mapping(self, m: Mapping[str, Any], key: str, path: P) -> Mapping[str, Any] | None:
        value = m.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.error((*path, key), f"expected a mapping, got {type(value).__name__}")
            return None
        return value

    def items(self, m: Mapping[str, Any], key: str, path: P) -> list[tuple[P, Mapping[str, Any]]]:
        value = m.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error((*path, key), f"expected a list, got {type(value).__name__}")
            return []
        out: list[tuple[P, Mapping[str, Any]]] = []
        for i, item in enumerate(value):
            if isinstance(item, Mapping):
                out.append(((*path, key, i), item))
            else:
                self.error((*path, key, i), f"expected a mapping, got {type(item).__name__}")
        return out

    def required(self, m: Mapping[str, Any], key: str, path: P) -> str:
        value = self.string(m, key, path)
        if not value:
            self.error((*path, key), "is required")
        return value

    def ownership(self, m: Mapping[str, Any], path: P) -> Ownership:
        return Ownership(
            owner=self.integer(m, "owner", path),
            group=self.integer(m, "group", path),
            owner_string=self.string(m, "owner_string", path),
        )


def _user(r: _Reader, name: str, m: Mapping[str, Any], path: P) -> User:
    for key in m:
        if key not in _USER_KEYS:
            r.warn((*path, str(key)), "unknown user key, ignored")
    user = User(
        name=name,
        passwd=r.string(m, "passwd", path),
        lock_passwd=r.boolean(m, "lock_passwd", path),
        groups=r.strings(m, "groups", path),
        primary_group=r.string(m, "primary_group", path),
        homedir=r.string(m, "homedir", path),
        shell=r.string(m, "shell", path),
        uid=r.integer(m, "uid", path),
        system=r.boolean(m, "system", path),
        no_create_home=r.boolean(m, "no_create_home", path),
        gecos=r.string(m, "gecos", path),
        ssh_authorized_keys=r.strings(m, "ssh_authorized_keys", path),
    )
    # These land in colon-separated files: a ':' or newline would forge another field or line.
    if not _NAME.match(name):
        r.error(path, f"invalid user name {name!r}", "letters, digits, '_', '-', '.'")
    for key in ("gecos", "homedir", "shell", "primary_group"):
        if any(c in getattr(user, key) for c in ":\n"):
            r.error((*path, key), "must not contain ':' or a newline")
    for i, group in enumerate(user.groups):
        if not _NAME.match(group):
            r.error((*path, "groups", i), f"invalid group name {group!r}")
    if user.passwd.startswith("$") and any(c in user.passwd for c in ":\n"):
        r.error((*path, "passwd"), "a hash must not contain ':' or a newline")
    if user.uid is not None and not 0 <= user.uid < 2**31:
        r.error((*path, "uid"), f"uid {user.uid} out of range")
    return user


def _users(r: _Reader, m: Mapping[str, Any], path: P) -> tuple[User, ...]:
    value = r.mapping(m, "users", path)
    if value is None:
        return ()
    out = []
    for name, spec in value.items():
        upath = (*path, "users", str(name))
        if spec is None:
            spec = {}
        if not isinstance(spec, Mapping):
            r.error(upath, f"expected a mapping, got {type(spec).__name__}")
            continue
        out.append(_user(r, str(name), spec, upath))
    return tuple(out)


def _authorized_keys(r: _Reader, m: Mapping[str, Any], path: P) -> dict[str, tuple[str, ...]]:
    value = r.mapping(m, "authorized_keys", path)
    if value is None:
        return {}
    return {str(user): r.strings(value, str(user), (*path, "authorized_keys")) for user in value}


def _conditions(r: _Reader, m: Mapping[str, Any], path: P) -> Conditions:
    if_files = None
    raw = r.mapping(m, "if_files", path)
    if raw is not None:
        p = (*path, "if_files")
        if_files = IfFiles(
            any=r.strings(raw, "any", p),
            all=r.strings(raw, "all", p),
            none=r.strings(raw, "none", p),
        )
    return Conditions(
        if_=r.string(m, "if", path),
        node=r.string(m, "node", path),
        only_os=r.string(m, "only_os", path),
        only_os_version=r.string(m, "only_os_version", path),
        only_arch=r.string(m, "only_arch", path),
        only_service_manager=r.string(m, "only_service_manager", path),
        if_files=if_files,
    )


def _after(r: _Reader, m: Mapping[str, Any], path: P) -> tuple[str, ...]:
    value = m.get("after")
    if value is None:
        return ()
    if not isinstance(value, list):
        r.error((*path, "after"), "expected a list of {name: ...}")
        return ()
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            out.append(item["name"])
        elif isinstance(item, str):
            out.append(item)
        else:
            r.error((*path, "after", i), "expected {name: <file or root name>.<step name|index>}")
    return tuple(out)


# Per kind: the YAML field of each column of the account file line, name first.
_ENTITY_FIELDS: dict[EntityKind, tuple[str, ...]] = {
    EntityKind.USER: ("username", "password", "uid", "gid", "info", "homedir", "shell"),
    EntityKind.GROUP: ("group_name", "password", "gid", "users"),
    EntityKind.SHADOW: (
        "username",
        "password",
        "last_changed",
        "minimum_changed",
        "maximum_changed",
        "warn",
        "inactive",
        "expire",
        "reserved",
    ),
    EntityKind.GSHADOW: ("name", "password", "administrators", "members"),
}


def _entities(r: _Reader, m: Mapping[str, Any], key: str, path: P) -> tuple[Entity, ...]:
    """yip entities: each `entity:` is itself a YAML document in a string."""
    import yaml

    out = []
    for epath, item in r.items(m, key, path):
        target = r.string(item, "path", epath)
        text = r.string(item, "entity", epath)
        try:
            data = yaml.safe_load(text) if text else None
        except yaml.YAMLError as exc:
            r.error((*epath, "entity"), f"invalid YAML: {exc}")
            continue
        if not isinstance(data, Mapping):
            r.error((*epath, "entity"), "expected a YAML mapping with a kind")
            continue
        try:
            kind = EntityKind(str(data.get("kind", "")))
        except ValueError:
            r.error((*epath, "entity"), "kind must be user, group, shadow or gshadow")
            continue
        names = _ENTITY_FIELDS[kind]
        if target and target != f"/etc/{kind}" and not (kind == "user" and target == "/etc/passwd"):
            r.error((*epath, "path"), f"only the default file of a {kind} entity is supported")
            continue
        unknown = sorted(set(map(str, data)) - {*names, "kind"})
        if unknown:
            r.warn((*epath, "entity"), f"unknown {kind} fields {', '.join(unknown)}, ignored")
        values = tuple(
            ""
            if data.get(n) is None
            else str(data[n]).lower()
            if isinstance(data[n], bool)
            else str(data[n])
            for n in names
        )
        if not values[0] or any(":" in v or "\n" in v for v in values):
            r.error((*epath, "entity"), f"{names[0]} is required and no field may hold ':'")
            continue
        out.append(Entity(kind, values))
    return tuple(out)


def _git(r: _Reader, m: Mapping[str, Any], path: P) -> Git | None:
    raw = r.mapping(m, "git", path)
    if raw is None:
        return None
    p = (*path, "git")
    auth = r.mapping(raw, "auth", p) or {}
    ap = (*p, "auth")
    if auth.get("public_key"):
        r.warn((*ap, "public_key"), "not needed by the git client, ignored")
    return Git(
        url=r.required(raw, "url", p),
        path=r.required(raw, "path", p),
        branch=r.string(raw, "branch", p),
        branch_only=r.boolean(raw, "branch_only", p),
        auth=GitAuth(
            username=r.string(auth, "username", ap),
            password=r.string(auth, "password", ap),
            private_key=r.string(auth, "private_key", ap),
            insecure=r.boolean(auth, "insecure", ap),
        ),
    )


def _systemctl(r: _Reader, m: Mapping[str, Any], path: P) -> Systemctl | None:
    raw = r.mapping(m, "systemctl", path)
    if raw is None:
        return None
    p = (*path, "systemctl")
    overrides = []
    for opath, o in r.items(raw, "overrides", p):
        name = r.string(o, "name", opath) or "override-yip.conf"
        if not name.endswith(".conf"):
            name += ".conf"
        # Upstream's names: the file is `override-yip.conf` unless named, so configs that
        # override it again by name keep working.
        overrides.append(
            Override(
                service=r.required(o, "service", opath),
                content=r.required(o, "content", opath),
                name=name,
            )
        )
    return Systemctl(
        enable=r.strings(raw, "enable", p),
        disable=r.strings(raw, "disable", p),
        start=r.strings(raw, "start", p),
        mask=r.strings(raw, "mask", p),
        overrides=tuple(overrides),
    )


def _layout(r: _Reader, m: Mapping[str, Any], path: P) -> Layout | None:
    raw = r.mapping(m, "layout", path)
    if raw is None:
        return None
    p = (*path, "layout")
    device = r.mapping(raw, "device", p) or {}
    dp = (*p, "device")
    expand = r.mapping(raw, "expand_partition", p)
    parts = []
    for ppath, part in r.items(raw, "add_partitions", p):
        parts.append(
            Partition(
                fs_label=r.string(part, "fsLabel", ppath),
                size_mib=r.integer(part, "size", ppath) or 0,
                p_label=r.string(part, "pLabel", ppath),
                filesystem=r.string(part, "filesystem", ppath, "ext2"),
                bootable=r.boolean(part, "bootable", ppath),
            )
        )
    layout = Layout(
        device_label=r.string(device, "label", dp),
        device_path=r.string(device, "path", dp),
        init_disk=r.boolean(device, "init_disk", dp),
        expand_size_mib=None
        if expand is None
        else (r.integer(expand, "size", (*p, "expand_partition")) or 0),
        add_partitions=tuple(parts),
    )
    if not layout.device_label and not layout.device_path:
        r.error(dp, "needs a label or a path", "name the disk to partition")
    return layout


def _packages(r: _Reader, m: Mapping[str, Any], path: P) -> Packages | None:
    raw = r.mapping(m, "packages", path)
    if raw is None:
        return None
    p = (*path, "packages")
    return Packages(
        install=r.strings(raw, "install", p),
        remove=r.strings(raw, "remove", p),
        refresh=r.boolean(raw, "refresh", p),
        upgrade=r.boolean(raw, "upgrade", p),
    )


def parse_step(
    r: _Reader, m: Mapping[str, Any], path: P, root_name: str, index: int, name: str = ""
) -> Step:
    for key in m:
        if key not in STEP_KEYS:
            r.warn((*path, str(key)), "unknown step key, ignored")
    dns_raw = r.mapping(m, "dns", path)
    dns = None
    if dns_raw is not None:
        dp = (*path, "dns")
        dns = Dns(
            nameservers=r.strings(dns_raw, "nameservers", dp),
            search=r.strings(dns_raw, "search", dp),
            options=r.strings(dns_raw, "options", dp),
            path=r.string(dns_raw, "path", dp, "/etc/resolv.conf"),
        )
    return Step(
        root_name=root_name,
        index=index,
        name=name or r.string(m, "name", path),
        source=r.doc.source,
        line=r.doc.line_of(path),
        after=_after(r, m, path),
        conditions=_conditions(r, m, path),
        dns=dns,
        ensure_entities=_entities(r, m, "ensure_entities", path),
        delete_entities=_entities(r, m, "delete_entities", path),
        git=_git(r, m, path),
        downloads=tuple(
            Download(
                path=r.required(d, "path", p),
                url=r.required(d, "url", p),
                permissions=r.mode(d, "permissions", p),
                ownership=r.ownership(d, p),
                timeout=float(r.integer(d, "timeout", p) or 30),
            )
            for p, d in r.items(m, "downloads", path)
        ),
        directories=tuple(
            Directory(
                path=r.required(d, "path", p),
                permissions=r.mode(d, "permissions", p),
                ownership=r.ownership(d, p),
            )
            for p, d in r.items(m, "directories", path)
        ),
        files=tuple(
            File(
                path=r.required(f, "path", p),
                content=r.string(f, "content", p),
                encoding=r.string(f, "encoding", p),
                permissions=r.mode(f, "permissions", p),
                ownership=r.ownership(f, p),
            )
            for p, f in r.items(m, "files", path)
        ),
        commands=r.strings(m, "commands", path),
        hostname=r.string(m, "hostname", path),
        sysctl=r.str_map(m, "sysctl", path),
        users=_users(r, m, path),
        authorized_keys=_authorized_keys(r, m, path),
        modules=r.strings(m, "modules", path),
        timesyncd=r.str_map(m, "timesyncd", path),
        systemctl=_systemctl(r, m, path),
        environment=r.str_map(m, "environment", path),
        environment_file=r.string(m, "environment_file", path),
        systemd_firstboot=r.str_map(m, "systemd_firstboot", path),
        layout=_layout(r, m, path),
        packages=_packages(r, m, path),
        unsupported=tuple(k for k in UNSUPPORTED_KEYS if m.get(k) not in (None, [], {})),
    )


def _is_remote_key(key: str) -> bool:
    return key.startswith(("github:", "gitlab:"))


def _compat_steps(r: _Reader, data: Mapping[str, Any], root_name: str) -> dict[str, list[Step]]:
    """yip's cloud-init translation: users/write_files/runcmd/ssh keys -> boot, hostname ->
    initramfs, github:/gitlab: keys -> network (they need the network), growpart -> layout."""
    out: dict[str, list[Step]] = {}
    users: list[User] = []
    global_keys = r.strings(data, "ssh_authorized_keys", ())
    for upath, u in r.items(data, "users", ()):
        name = r.required(u, "name", upath)
        if name:
            users.append(_user(r, name, {k: v for k, v in u.items() if k != "name"}, upath))
    keys: dict[str, list[str]] = {}
    for user in users:
        keys.setdefault(user.name, []).extend([*user.ssh_authorized_keys, *global_keys])
    if not users and global_keys:
        keys["root"] = list(global_keys)
    local = {u: tuple(k for k in ks if not _is_remote_key(k)) for u, ks in keys.items()}
    remote = {u: tuple(k for k in ks if _is_remote_key(k)) for u, ks in keys.items()}
    files = tuple(
        File(
            path=r.required(f, "path", p),
            content=r.string(f, "content", p),
            encoding=r.string(f, "encoding", p),
            permissions=r.mode(f, "permissions", p),
            ownership=Ownership(owner_string=r.string(f, "owner", p)),
        )
        for p, f in r.items(data, "write_files", ())
    )
    boot = Step(
        root_name=root_name,
        index=0,
        name="cloud-init",
        source=r.doc.source,
        line=r.doc.line_of(()),
        files=files,
        commands=r.strings(data, "runcmd", ()),
        users=tuple(
            replace(u, ssh_authorized_keys=())  # keys go through authorized_keys
            for u in users
        ),
        authorized_keys={u: k for u, k in local.items() if k},
    )
    if boot.files or boot.commands or boot.users or boot.authorized_keys:
        out.setdefault("boot", []).append(boot)
    growpart = r.mapping(data, "growpart", ())
    for i, dev in enumerate(r.strings(growpart or {}, "devices", ("growpart",))):
        out.setdefault("boot", []).append(
            Step(
                root_name=root_name,
                index=i,
                name=f"cloud-init-growpart-{i}",
                source=r.doc.source,
                line=r.doc.line_of(("growpart",)),
                layout=Layout(device_path=dev, expand_size_mib=0),
            )
        )
    if any(remote.values()):
        out.setdefault("network", []).append(
            Step(
                root_name=root_name,
                index=0,
                name="cloud-init-keys",
                source=r.doc.source,
                authorized_keys={u: k for u, k in remote.items() if k},
            )
        )
    hostname = r.string(data, "hostname", ())
    if hostname:
        out.setdefault("initramfs", []).append(
            Step(
                root_name=root_name,
                index=0,
                name="cloud-init-hostname",
                source=r.doc.source,
                line=r.doc.line_of(("hostname",)),
                hostname=hostname,
            )
        )
    return out


def parse_document(doc: Document, text: str = "") -> StageFile:
    """All stages of one source. Cloud-init keys count only in files with a config header."""
    r = _Reader(doc)
    data = doc.data
    if data is None:
        return StageFile(source=doc.source, name=doc.source)
    if not isinstance(data, Mapping):
        r.error((), f"expected a mapping at the top, got {type(data).__name__}")
        return StageFile(source=doc.source, name=doc.source, problems=tuple(r.problems))
    root_name = r.string(data, "name", ()) or doc.source
    stages: dict[str, list[Step]] = {}
    if any(line.rstrip() in HEADERS for line in text.splitlines()[:10]):
        stages = _compat_steps(r, data, root_name)
    raw_stages = r.mapping(data, "stages", ())
    for stage, steps in (raw_stages or {}).items():
        spath: P = ("stages", str(stage))
        if steps is None:
            continue
        if not isinstance(steps, Sequence) or isinstance(steps, str):
            r.error(spath, f"expected a list of steps, got {type(steps).__name__}")
            continue
        for i, step in enumerate(steps):
            if not isinstance(step, Mapping):
                r.error((*spath, i), f"expected a step mapping, got {type(step).__name__}")
                continue
            before = len(r.problems)
            parsed = parse_step(r, step, (*spath, i), root_name, i)
            if len(r.problems) > before:
                parsed = replace(parsed, problems=tuple(r.problems[before:]))
            stages.setdefault(str(stage), []).append(parsed)
    return StageFile(
        source=doc.source,
        name=root_name,
        stages={k: tuple(v) for k, v in stages.items()},
        problems=tuple(r.problems),
        warnings=tuple(r.warnings),
    )
