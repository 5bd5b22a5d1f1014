"""The stage language after parsing: frozen dataclasses for stage files, steps and their parts.

Field names follow yip's schema (`mudler/yip` pkg/schema/schema.go); values are already
checked and normalised (octal modes as ints, sizes in MiB), so the runner and the step
plug-ins never look at raw YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

SUB_STAGE_SUFFIXES = (".before", "", ".after")


class ServiceManager(StrEnum):
    SYSTEMD = "systemd"
    OPENRC = "openrc"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class IfFiles:
    any: tuple[str, ...] = ()
    all: tuple[str, ...] = ()
    none: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conditions:
    """All must hold for a step to run; empty strings mean "no condition"."""

    if_: str = ""
    node: str = ""
    only_os: str = ""
    only_os_version: str = ""
    only_arch: str = ""
    only_service_manager: str = ""
    if_files: IfFiles | None = None

    def describe(self) -> list[str]:
        out = [
            f"{key}: {value}"
            for key, value in (
                ("if", self.if_),
                ("node", self.node),
                ("only_os", self.only_os),
                ("only_os_version", self.only_os_version),
                ("only_arch", self.only_arch),
                ("only_service_manager", self.only_service_manager),
            )
            if value
        ]
        if self.if_files is not None:
            out.append("if_files")
        return out


@dataclass(frozen=True)
class Dns:
    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    path: str = "/etc/resolv.conf"


@dataclass(frozen=True)
class Ownership:
    """Numeric ids, or a `user[:group]` string resolved through the root's own account files."""

    owner: int | None = None
    group: int | None = None
    owner_string: str = ""


@dataclass(frozen=True)
class Download:
    path: str
    url: str
    permissions: int | None = None
    ownership: Ownership = field(default_factory=Ownership)
    timeout: float = 30.0


@dataclass(frozen=True)
class GitAuth:
    username: str = ""
    password: str = ""
    private_key: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class Git:
    url: str
    path: str
    branch: str = ""
    branch_only: bool = False
    auth: GitAuth = field(default_factory=GitAuth)


@dataclass(frozen=True)
class Directory:
    path: str
    permissions: int | None = None
    ownership: Ownership = field(default_factory=Ownership)


@dataclass(frozen=True)
class File:
    path: str
    content: str = ""
    encoding: str = ""
    permissions: int | None = None
    ownership: Ownership = field(default_factory=Ownership)


@dataclass(frozen=True)
class User:
    name: str
    passwd: str = ""
    lock_passwd: bool = False
    groups: tuple[str, ...] = ()
    primary_group: str = ""
    homedir: str = ""
    shell: str = ""
    uid: int | None = None
    system: bool = False
    no_create_home: bool = False
    gecos: str = ""
    ssh_authorized_keys: tuple[str, ...] = ()


class EntityKind(StrEnum):
    USER = "user"
    GROUP = "group"
    SHADOW = "shadow"
    GSHADOW = "gshadow"


@dataclass(frozen=True)
class Entity:
    """One line of an account file, as yip's `ensure_entities`/`delete_entities` give it."""

    kind: EntityKind
    fields: tuple[str, ...]  # the line's fields, name first, already in file order

    @property
    def name(self) -> str:
        return self.fields[0]


@dataclass(frozen=True)
class Override:
    service: str
    content: str
    name: str = "override-yip.conf"


@dataclass(frozen=True)
class Systemctl:
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()


@dataclass(frozen=True)
class Partition:
    fs_label: str = ""
    size_mib: int = 0  # 0: all the remaining space
    p_label: str = ""
    filesystem: str = "ext2"  # upstream's default when omitted
    bootable: bool = False


@dataclass(frozen=True)
class Layout:
    device_label: str = ""
    device_path: str = ""  # a device, or `script://CMD ARGS` printing one
    init_disk: bool = False
    expand_size_mib: int | None = None  # None: no expansion; 0: all free space
    add_partitions: tuple[Partition, ...] = ()


@dataclass(frozen=True)
class Packages:
    install: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    refresh: bool = False
    upgrade: bool = False


@dataclass(frozen=True)
class Step:
    """One item of a stage list: conditions, then actions applied in upstream's fixed order."""

    root_name: str  # the file's `name:`, or its path
    index: int
    name: str = ""
    source: str = ""
    line: int | None = None
    after: tuple[str, ...] = ()
    conditions: Conditions = field(default_factory=Conditions)
    dns: Dns | None = None
    downloads: tuple[Download, ...] = ()
    git: Git | None = None
    ensure_entities: tuple[Entity, ...] = ()
    directories: tuple[Directory, ...] = ()
    files: tuple[File, ...] = ()
    commands: tuple[str, ...] = ()
    delete_entities: tuple[Entity, ...] = ()
    hostname: str = ""
    sysctl: Mapping[str, str] = field(default_factory=dict)
    users: tuple[User, ...] = ()
    authorized_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    modules: tuple[str, ...] = ()
    timesyncd: Mapping[str, str] = field(default_factory=dict)
    systemctl: Systemctl | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    environment_file: str = ""
    systemd_firstboot: Mapping[str, str] = field(default_factory=dict)
    layout: Layout | None = None
    packages: Packages | None = None
    # Keys upstream knows that we accept but do not apply yet (git, unpack_images, ...).
    unsupported: tuple[str, ...] = ()
    # What was wrong with this step's own fields; a step with problems is never applied.
    problems: tuple[str, ...] = ()

    @property
    def op_name(self) -> str:
        """The name `after:` refers to: `<file name|path>.<step name|index>`, as yip's DAG."""
        return f"{self.root_name}.{self.name or self.index}"

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass(frozen=True)
class StageFile:
    """One parsed source: its steps per stage name, and what was wrong with it."""

    source: str
    name: str
    stages: Mapping[str, tuple[Step, ...]] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
