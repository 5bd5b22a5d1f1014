"""Second validation tier: what a schema cannot say.

Device syntax, partition sizes, file modes and encodings, `after:` references between steps,
duplicate users, and the cross-field rules upstream enforces at install time. Each check reads
the raw data defensively: values of the wrong type were already reported by the schema tier
and are skipped here, so both tiers can report in the same run.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kairos.config.jsonschema_lite import Finding, Path_, Severity, is_template
from kairos.config.schema import GRUB_OPTION_KEYS, KNOWN_STAGES
from kairos.config.yamlload import Document

FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "fat", "swap", "none"})
IMAGE_SCHEMES = frozenset({"oci", "ocifile", "dir", "file", "docker", "container"})
GRUB_ENTRIES = frozenset({"cos", "fallback", "recovery", "statereset", "remoterecovery"})
MAX_MODE = 0o7777
GZIP_CHECK_BYTES = 1 << 20

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_USERNAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
# Steps' conditional and bookkeeping keys: a step with only these does nothing.
_NOT_ACTIONS = frozenset(
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
    }
)


@dataclass(frozen=True)
class Located:
    """A finding and the index of the document it belongs to."""

    doc: int
    finding: Finding


def _err(doc: int, path: Path_, message: str, hint: str | None = None) -> Located:
    return Located(doc, Finding(path, message, hint, Severity.ERROR))


def _warn(doc: int, path: Path_, message: str, hint: str | None = None) -> Located:
    return Located(doc, Finding(path, message, hint, Severity.WARNING))


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    """A plain (non-template) string, else None: templates are checked after rendering."""
    return value if isinstance(value, str) and not is_template(value) else None


def _truthy(value: object) -> bool:
    """True, or a YAML 1.1 true word the schema tier already warned about."""
    return value is True or (isinstance(value, str) and value.lower() in ("yes", "y", "on"))


def check_documents(docs: Sequence[Document]) -> list[Located]:
    """Every semantic finding over all documents, in document order."""
    out: list[Located] = []
    for index, doc in enumerate(docs):
        data = _map(doc.data)
        out.extend(_check_install(index, data))
        for block in ("upgrade", "reset"):
            out.extend(_check_power(index, (block,), _map(data.get(block))))
            for image in ("system", "recovery-system"):
                out.extend(
                    _check_image(index, (block, image), _map(_map(data.get(block)).get(image)))
                )
        out.extend(_check_grub_options(index, ("grub_options",), _map(data.get("grub_options"))))
        out.extend(_check_root_files(index, data))
        out.extend(_check_stages(index, data))
        url = _text(data.get("config_url"))
        if url and not re.match(r"^(https?|file)://", url):
            out.append(_warn(index, ("config_url",), f"{url!r} is not an http, https or file URL"))
        hostname = _text(data.get("hostname"))
        if hostname and not _HOSTNAME.match(hostname):
            out.append(
                _err(
                    index,
                    ("hostname",),
                    f"{hostname!r} is not a valid hostname",
                    "use letters, digits, '-' and '.'",
                )
            )
    out.extend(_check_users(docs))
    out.extend(_check_after(docs))
    out.extend(_check_ssh_hardening(docs))
    return out


# --- install / upgrade / reset ----------------------------------------------------------


def _check_install(doc: int, data: Mapping[str, Any]) -> Iterator[Located]:
    install = _map(data.get("install"))
    if not install:
        return
    device = _text(install.get("device"))
    if device is not None:
        lowered = device.lower()
        if (
            "by-partlabel" in lowered
            or "by-partuuid" in lowered
            or lowered.startswith(("partlabel=", "partuuid="))
        ):
            yield _err(
                doc,
                ("install", "device"),
                f"{device!r} names a partition, but install needs a whole disk",
                "use auto, /dev/sdX, /dev/disk/by-id/... or script://COMMAND",
            )
    yield from _check_power(doc, ("install",), install)
    source = _text(install.get("source"))
    if source:
        yield from _check_source(doc, ("install", "source"), source)
    for image in ("system", "passive", "recovery-system"):
        yield from _check_image(doc, ("install", image), _map(install.get(image)))
    yield from _check_grub_options(
        doc, ("install", "grub_options"), _map(install.get("grub_options"))
    )
    for name, part in _map(install.get("partitions")).items():
        yield from _check_fs(doc, ("install", "partitions", name, "fs"), _map(part).get("fs"))
    extra = _list(install.get("extra-partitions"))
    rest_of_disk: list[int] = []
    names: dict[str, int] = {}
    for i, part in enumerate(extra):
        part = _map(part)
        path = ("install", "extra-partitions", i)
        size = part.get("size")
        if size in (None, 0):
            rest_of_disk.append(i)
            if len(rest_of_disk) > 1:
                yield _err(
                    doc,
                    (*path, "size"),
                    f"extra partition {i} takes the rest of the disk, "
                    f"but so does extra partition {rest_of_disk[0]}",
                    "give every extra partition but one a size in MiB",
                )
        yield from _check_fs(doc, (*path, "fs"), part.get("fs"))
        for key in ("name", "label"):
            value = _text(part.get(key))
            if value:
                seen = names.setdefault(f"{key}:{value}", i)
                if seen != i:
                    yield _err(
                        doc, (*path, key), f"{key} {value!r} is also used by extra partition {seen}"
                    )


def _check_power(doc: int, path: Path_, block: Mapping[str, Any]) -> Iterator[Located]:
    if _truthy(block.get("reboot")) and _truthy(block.get("poweroff")):
        yield _err(doc, (*path, "poweroff"), "reboot and poweroff are both true", "choose one")


def _check_image(doc: int, path: Path_, image: Mapping[str, Any]) -> Iterator[Located]:
    for key in ("uri", "source"):
        value = _text(image.get(key))
        if value:
            yield from _check_source(doc, (*path, key), value)


def _check_source(doc: int, path: Path_, source: str) -> Iterator[Located]:
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):(?!\d)", source)
    # `registry:5000/image` is a port, and `quay.io/x:tag` has no scheme; both are images.
    if match and "." not in match.group(1) and match.group(1) not in IMAGE_SCHEMES:
        yield _err(
            doc,
            path,
            f"unknown image source type '{match.group(1)}:'",
            "use oci:IMAGE, ocifile:PATH, dir:PATH or file:PATH",
        )


def _check_fs(doc: int, path: Path_, fs: object) -> Iterator[Located]:
    value = _text(fs)
    if value and value not in FILESYSTEMS:
        yield _warn(
            doc, path, f"unknown filesystem {value!r}", "known: " + ", ".join(sorted(FILESYSTEMS))
        )


def _check_grub_options(doc: int, path: Path_, options: Mapping[str, Any]) -> Iterator[Located]:
    for key in options:
        close = difflib.get_close_matches(str(key), GRUB_OPTION_KEYS, n=1, cutoff=0.8)
        if str(key) not in GRUB_OPTION_KEYS and close:
            yield _warn(
                doc,
                (*path, str(key)),
                f"'{key}' is not a variable the boot menu reads",
                f"did you mean '{close[0]}'?",
            )
    for key in ("next_entry", "saved_entry"):
        value = _text(options.get(key))
        if value and value not in GRUB_ENTRIES:
            yield _warn(
                doc,
                (*path, key),
                f"{value!r} is not a known boot entry",
                "known: " + ", ".join(sorted(GRUB_ENTRIES)),
            )


# --- files ------------------------------------------------------------------------------


def _check_root_files(doc: int, data: Mapping[str, Any]) -> Iterator[Located]:
    for i, entry in enumerate(_list(data.get("write_files"))):
        yield from _check_file(doc, ("write_files", i), _map(entry))


def _check_file(doc: int, path: Path_, entry: Mapping[str, Any]) -> Iterator[Located]:
    target = _text(entry.get("path"))
    if target is not None and not target.startswith("/"):
        yield _warn(doc, (*path, "path"), f"{target!r} is not an absolute path", "start it with /")
    yield from _check_mode(doc, (*path, "permissions"), entry.get("permissions"))
    encoding = _text(entry.get("encoding")) or ""
    content = _text(entry.get("content"))
    if content is None or not encoding:
        return
    if "b64" not in encoding and "base64" not in encoding:
        try:
            # Raw gzip can only be carried in YAML text as latin-1 code points.
            data = content.encode("latin-1")
        except UnicodeEncodeError:
            yield _err(doc, (*path, "content"), f"content is not gzip data (encoding {encoding})")
            return
    else:
        try:
            data = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            yield _err(
                doc, (*path, "content"), f"content is not valid base64 (encoding {encoding})"
            )
            return
    if encoding.startswith("gz") and not _gzip_starts_well(data):
        yield _err(doc, (*path, "content"), f"content is not gzip data (encoding {encoding})")


def _gzip_starts_well(data: bytes) -> bool:
    """Decode the first MiB only: a gzip bomb must not make validation slow or big."""
    if not data:
        return True
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        decoder.decompress(data, GZIP_CHECK_BYTES)
    except zlib.error:
        return False
    return True


def _check_mode(doc: int, path: Path_, mode: object) -> Iterator[Located]:
    if isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3,4}", mode):
        mode = int(mode, 8)
    if isinstance(mode, int) and not isinstance(mode, bool) and mode > MAX_MODE:
        yield _err(
            doc,
            path,
            f"mode {mode} (0o{mode:o}) is larger than 0o7777",
            "write the mode in octal with a leading zero, e.g. 0644",
        )


# --- stages -----------------------------------------------------------------------------


def _steps(data: Mapping[str, Any]) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    for stage, steps in _map(data.get("stages")).items():
        for i, step in enumerate(_list(steps)):
            if isinstance(step, dict):
                yield str(stage), i, step


def _check_stages(doc: int, data: Mapping[str, Any]) -> Iterator[Located]:
    for stage in _map(data.get("stages")):
        stage = str(stage)
        if stage not in KNOWN_STAGES:
            close = difflib.get_close_matches(stage, sorted(KNOWN_STAGES), n=1, cutoff=0.8)
            if close:
                yield _warn(
                    doc,
                    ("stages", stage),
                    f"unknown stage '{stage}'",
                    f"did you mean '{close[0]}'?",
                )
    for stage, i, step in _steps(data):
        path: Path_ = ("stages", stage, i)
        if not set(step) - _NOT_ACTIONS:
            yield _warn(doc, path, "step has no action", "add commands, files or another action")
        for j, entry in enumerate(_list(step.get("files"))):
            yield from _check_file(doc, (*path, "files", j), _map(entry))
        for key in ("directories", "downloads"):
            for j, entry in enumerate(_list(step.get(key))):
                yield from _check_mode(
                    doc, (*path, key, j, "permissions"), _map(entry).get("permissions")
                )
        hostname = _text(step.get("hostname"))
        if hostname and not _HOSTNAME.match(hostname):
            yield _err(
                doc,
                (*path, "hostname"),
                f"{hostname!r} is not a valid hostname",
                "use letters, digits, '-' and '.'",
            )
        for name in _map(step.get("users")):
            if not _USERNAME.match(str(name)):
                yield _warn(
                    doc,
                    (*path, "users", str(name)),
                    f"{str(name)!r} is not a portable user name",
                    "use lower-case letters, digits, '_' and '-'",
                )
        yield from _check_layout(doc, (*path, "layout"), _map(step.get("layout")))


def _check_layout(doc: int, path: Path_, layout: Mapping[str, Any]) -> Iterator[Located]:
    device = _map(layout.get("device"))
    target = _text(device.get("path"))
    if target and not target.startswith(("/dev/", "script://")):
        yield _warn(
            doc,
            (*path, "device", "path"),
            f"{target!r} is not a device",
            "use /dev/... or script://COMMAND",
        )
    parts = _list(layout.get("add_partitions"))
    labels: dict[str, int] = {}
    for i, part in enumerate(parts):
        part = _map(part)
        if part.get("size") in (None, 0) and i != len(parts) - 1:
            yield _err(
                doc,
                (*path, "add_partitions", i, "size"),
                "only the last added partition can take all free space (size 0 or no size)",
                "give this partition a size in MiB",
            )
        yield from _check_fs(
            doc, (*path, "add_partitions", i, "filesystem"), part.get("filesystem")
        )
        label = _text(part.get("fsLabel"))
        if label:
            first = labels.setdefault(label, i)
            if first != i:
                yield _err(
                    doc,
                    (*path, "add_partitions", i, "fsLabel"),
                    f"label {label!r} is also used by partition {first}",
                )


# --- across documents -------------------------------------------------------------------


def _check_users(docs: Sequence[Document]) -> Iterator[Located]:
    seen: dict[str, tuple[int, int]] = {}
    for d, doc in enumerate(docs):
        for i, user in enumerate(_list(_map(doc.data).get("users"))):
            name = _text(_map(user).get("name"))
            if name is None:
                continue
            path: Path_ = ("users", i, "name")
            if not _USERNAME.match(name):
                yield _warn(
                    d,
                    path,
                    f"{name!r} is not a portable user name",
                    "use lower-case letters, digits, '_' and '-'",
                )
            if name in seen:
                first_doc, first_index = seen[name]
                if first_doc == d:
                    yield _err(
                        d,
                        path,
                        f"user {name!r} is already defined at users[{first_index}]",
                        "merge the two entries",
                    )
                else:
                    yield _warn(
                        d,
                        path,
                        f"user {name!r} is also defined in {docs[first_doc].source}",
                        "both entries are applied",
                    )
            else:
                seen[name] = (d, i)


def _op_names(docs: Sequence[Document]) -> dict[str, Counter[str]]:
    """Per stage, the names `after:` can use: `<config name or source>.<step name or index>`."""
    names: dict[str, Counter[str]] = {}
    for doc in docs:
        root = _root_name(doc)
        for stage, i, step in _steps(_map(doc.data)):
            names.setdefault(stage, Counter())[_op_name(root, step, i)] += 1
    return names


def _op_name(root: str, step: Mapping[str, Any], index: int) -> str:
    name = step.get("name")
    return f"{root}.{name if name else index}"


def _root_name(doc: Document) -> str:
    name = _map(doc.data).get("name")
    return str(name) if name else doc.source


def _check_after(docs: Sequence[Document]) -> Iterator[Located]:
    known = _op_names(docs)
    roots = {_root_name(doc) for doc in docs}
    edges: list[tuple[str, str, str, int, Path_]] = []
    for d, doc in enumerate(docs):
        root = _root_name(doc)
        prefix = root + "."
        for stage, i, step in _steps(_map(doc.data)):
            own = _op_name(root, step, i)
            names = known.get(stage, Counter())
            bare = {n.removeprefix(prefix): n for n in names if n.startswith(prefix)}
            for j, dep in enumerate(_list(step.get("after"))):
                ref = _text(_map(dep).get("name"))
                if ref is None:
                    continue
                path: Path_ = ("stages", stage, i, "after", j, "name")
                if ref == own:
                    yield _err(d, path, f"step '{own}' waits for itself")
                elif ref in names:
                    edges.append((stage, own, ref, d, path))
                    if names[ref] > 1:
                        yield _warn(
                            d,
                            path,
                            f"{names[ref]} steps are named {ref!r} in stage '{stage}'",
                            "give the steps distinct names",
                        )
                elif ref in bare:
                    yield _err(
                        d,
                        path,
                        f"no step named {ref!r} in stage '{stage}'",
                        f"write it as '{bare[ref]}'",
                    )
                elif any(ref.startswith(r + ".") for r in roots):
                    yield _err(
                        d,
                        path,
                        f"no step named {ref!r} in stage '{stage}'",
                        "known: " + ", ".join(sorted(names)) if names else None,
                    )
                else:
                    # It may name a step of a config that lives elsewhere on the node.
                    yield _warn(
                        d,
                        path,
                        f"no step named {ref!r} in stage '{stage}' of the given configs",
                        "names are <config name or file>.<step name>",
                    )
    yield from _check_cycles(edges)


def _check_cycles(edges: Sequence[tuple[str, str, str, int, Path_]]) -> Iterator[Located]:
    """An `after:` edge whose target waits, directly or not, for its source never runs."""
    graph: dict[tuple[str, str], set[str]] = {}
    for stage, src, dst, _, _ in edges:
        graph.setdefault((stage, src), set()).add(dst)
    for stage, src, dst, d, path in edges:
        seen: set[str] = set()
        todo = [dst]
        while todo:
            node = todo.pop()
            if node == src:
                yield _err(
                    d, path, f"'{src}' and '{dst}' wait for each other", "remove one `after:`"
                )
                break
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get((stage, node), ()))


def _check_ssh_hardening(docs: Sequence[Document]) -> Iterator[Located]:
    for d, doc in enumerate(docs):
        if _map(_map(doc.data).get("install")).get("ssh_hardening") is not True:
            continue
        users = [
            (e, i, _map(u))
            for e, other in enumerate(docs)
            for i, u in enumerate(_list(_map(other.data).get("users")))
        ]
        if not any(_list(u.get("ssh_authorized_keys")) for _, _, u in users):
            yield _err(
                d,
                ("install", "ssh_hardening"),
                "ssh_hardening needs at least one user with ssh_authorized_keys",
                "otherwise nobody can log in over SSH",
            )
        for e, i, u in users:
            if u.get("passwd"):
                yield _warn(
                    e,
                    ("users", i, "passwd"),
                    "the password cannot be used over SSH with install.ssh_hardening",
                    "remove it if intended",
                )
