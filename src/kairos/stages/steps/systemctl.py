"""`systemctl`: enable, disable, mask and drop-in overrides done offline, start on a live system.

Enabling is what `systemctl enable` does on disk: read the unit's [Install] section and
create the `.wants`/`.requires` and alias links under /etc/systemd/system. Doing it
ourselves works the same under `--root`, in a chroot and in the initramfs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run
from kairos.stages.model import Step
from kairos.stages.paths import ensure_dir, rooted, write_atomic

log = logging.getLogger("kairos.stages")

ETC = "/etc/systemd/system"
UNIT_DIRS = (
    ETC,
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
_SUFFIXES = (
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".mount",
    ".automount",
    ".path",
    ".slice",
    ".scope",
    ".swap",
    ".device",
)


def unit_name(name: str) -> str:
    """`sshd` -> `sshd.service`, as systemctl completes it."""
    return name if name.endswith(_SUFFIXES) else f"{name}.service"


@dataclass(frozen=True)
class Install:
    wanted_by: tuple[str, ...] = ()
    required_by: tuple[str, ...] = ()
    alias: tuple[str, ...] = ()
    also: tuple[str, ...] = ()
    default_instance: str = ""


def _parse_install(text: str) -> Install:
    fields: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Install":
            continue
        key, _, value = line.partition("=")
        if not value.strip():
            fields[key.strip()] = []  # an empty assignment resets the list
        else:
            fields.setdefault(key.strip(), []).extend(value.split())
    return Install(
        wanted_by=tuple(fields.get("WantedBy", ())),
        required_by=tuple(fields.get("RequiredBy", ())),
        alias=tuple(fields.get("Alias", ())),
        also=tuple(fields.get("Also", ())),
        default_instance=" ".join(fields.get("DefaultInstance", ())),
    )


def find_unit(ctx: Context, unit: str) -> str | None:
    """The node path of the unit file (the template's for `foo@bar.service`), or None."""
    names = [unit]
    prefix, at, rest = unit.partition("@")
    if at and rest and not rest.startswith("."):
        names.append(f"{prefix}@{rest[rest.rfind('.') :]}")
    for name in names:
        for d in UNIT_DIRS:
            node = f"{d}/{name}"
            path = rooted(ctx, node, follow_last=False)
            if path.is_symlink() and os.readlink(path) == "/dev/null":
                continue  # masked: not a unit file
            if rooted(ctx, node).is_file():
                return node
    return None


def _link(ctx: Context, link_node: str, target: str) -> None:
    ensure_dir(ctx, str(PurePosixPath(link_node).parent))
    path = rooted(ctx, link_node, follow_last=False)
    if path.is_symlink():
        if os.readlink(path) == target:
            return
        path.unlink()
    elif path.exists():
        raise KairosError(f"{link_node}: exists and is not a symlink; not replaced.")
    os.symlink(target, path)


def enable(ctx: Context, name: str, seen: set[str] | None = None) -> None:
    unit = unit_name(name)
    seen = set() if seen is None else seen
    if unit in seen:
        return
    seen.add(unit)
    node = find_unit(ctx, unit)
    if node is None:
        raise KairosError(
            f"systemctl enable: unit {unit} not found.",
            hint=f"looked in {', '.join(UNIT_DIRS)} under {ctx.root}",
        )
    install = _parse_install(rooted(ctx, node).read_text(errors="replace"))
    instance_unit = unit
    if "@." in unit:  # the template itself: systemctl enables its DefaultInstance
        if not install.default_instance:
            raise KairosError(f"systemctl enable: {unit} is a template; name an instance.")
        instance_unit = unit.replace("@.", f"@{install.default_instance}.")
    if not (install.wanted_by or install.required_by or install.alias or install.also):
        log.warning("%s has no [Install] section; nothing to enable (static unit).", unit)
    for target in install.wanted_by:
        _link(ctx, f"{ETC}/{target}.wants/{instance_unit}", node)
    for target in install.required_by:
        _link(ctx, f"{ETC}/{target}.requires/{instance_unit}", node)
    for alias in install.alias:
        _link(ctx, f"{ETC}/{alias}", node)
    for also in install.also:
        enable(ctx, also, seen)


def disable(ctx: Context, name: str) -> None:
    unit = unit_name(name)
    etc = rooted(ctx, ETC)
    if not etc.is_dir():
        return
    node = find_unit(ctx, unit)
    targets = {node} if node else set()
    for dirpath, _dirs, files in os.walk(etc):
        for entry in files:
            path = Path(dirpath) / entry
            if not path.is_symlink():
                continue
            dest = os.readlink(path)
            if dest == "/dev/null":
                continue  # masks are undone by unmask, not disable
            in_wants = Path(dirpath) != etc
            if (in_wants and entry == unit) or dest in targets:
                path.unlink()


def mask(ctx: Context, name: str) -> None:
    unit = unit_name(name)
    path = rooted(ctx, f"{ETC}/{unit}", follow_last=False)
    if path.exists() and not path.is_symlink():
        raise KairosError(
            f"systemctl mask: {ETC}/{unit} is a unit file; not masked.",
            hint="remove or rename that file to mask the unit",
        )
    _link(ctx, f"{ETC}/{unit}", "/dev/null")


def _systemd_running(ctx: Context) -> bool:
    return ctx.is_host_root and Path("/run/systemd/system").is_dir()


def apply(step: Step, ctx: Context) -> None:
    sc = step.systemctl
    if sc is None:
        return
    for name in sc.enable:
        enable(ctx, name)
    for name in sc.disable:
        disable(ctx, name)
    for name in sc.mask:
        mask(ctx, name)
    for o in sc.overrides:
        node = f"{ETC}/{unit_name(o.service)}.d/{o.name}"
        write_atomic(ctx, node, o.content.encode())
    if not _systemd_running(ctx):
        if sc.start:
            log.warning(
                "%s: not starting %s: systemd is not running this root.",
                step.op_name,
                ", ".join(sc.start),
            )
        return
    run(["systemctl", "daemon-reload"])
    for name in sc.start:
        # --no-block: stage units (cos-setup-boot) run before the units they start.
        run(["systemctl", "start", "--no-block", unit_name(name)])
