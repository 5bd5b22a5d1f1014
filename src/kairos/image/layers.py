"""Apply OCI/docker layer tars onto a root directory, safely.

Every entry is written through directory file descriptors opened one component at a time
with O_NOFOLLOW, so no entry can reach outside the target: not with `..`, not with an
absolute name, and not THROUGH a symlink planted by an earlier entry or layer (that is
refused, not followed). Whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`)
hide what lower layers wrote, as the OCI image spec says.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kairos.errors import KairosError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_ESCAPE_HINT = "the image tries to write outside its root filesystem; do not use it"
_MALFORMED_HINT = "the layer is malformed; rebuild the image with a standard tool"
_DEVICE_HINT = "images should not carry device nodes: /dev is a devtmpfs at boot"


class LayerError(KairosError):
    """A layer entry was refused; the message names the layer and the entry."""


@dataclass(frozen=True)
class ApplyOptions:
    """What the caller allows. Device nodes only make sense as root in a real rootfs."""

    allow_devices: bool = False
    # Ownership needs root; without it files belong to the caller (a rootless unpack).
    keep_owner: bool = field(default_factory=lambda: os.geteuid() == 0)


@dataclass
class ApplyStats:
    entries: int = 0
    bytes: int = 0
    whiteouts: int = 0


def _split(name: str) -> tuple[str, ...]:
    """The entry's path components; never contains '', '.' or '..'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return tuple(parts)


def _check_name(name: str) -> str | None:
    """Why an entry name is unsafe, or None."""
    if name.startswith("/"):
        return "absolute path"
    if ".." in name.split("/"):
        return "path contains '..'"
    if "\0" in name:
        return "path contains a NUL byte"
    return None


def _symlink_escapes(parts: tuple[str, ...], target: str) -> bool:
    """True when a relative symlink target climbs above the root from where it lives.

    Absolute targets are fine: inside the image they name image paths, and this
    applier never follows a symlink on the host.
    """
    if target.startswith("/"):
        return False
    depth = len(parts) - 1
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                return True
        elif comp not in ("", "."):
            depth += 1
    return False


class _Tree:
    """The target root, walked with O_NOFOLLOW directory descriptors."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, _DIR_FLAGS)

    def close(self) -> None:
        os.close(self.fd)

    @contextlib.contextmanager
    def parent(self, parts: tuple[str, ...], *, create: bool) -> Iterator[int]:
        """Yield a descriptor of the directory holding `parts[-1]`.

        Missing directories are created (mode 0755) when `create` is set. A component that
        is a symlink or not a directory raises NotADirectoryError naming it.
        """
        fd = os.dup(self.fd)
        try:
            for i, comp in enumerate(parts[:-1]):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise NotADirectoryError("/".join(parts[: i + 1])) from exc
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int) -> None:
    """Remove an entry of any type; never follows symlinks."""
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _symlink_text(tree: _Tree, parts: tuple[str, ...]) -> str:
    """For an error message: where the offending symlink points, if it is one."""
    try:
        with tree.parent(parts, create=False) as fd:
            return os.readlink(parts[-1], dir_fd=fd)
    except OSError:
        return ""


class LayerApplier:
    """Applies layers in order onto one root; remembers nothing between roots."""

    def __init__(self, root: Path, options: ApplyOptions | None = None) -> None:
        self.root = root
        self.options = options or ApplyOptions()
        self.stats = ApplyStats()

    def apply(self, stream: IO[bytes], layer: str) -> None:
        """Apply one uncompressed layer tar read from `stream`; `layer` names it in errors."""
        tree = _Tree(self.root)
        # Paths this layer itself wrote: whiteouts and opaque markers hide lower layers only.
        created: set[tuple[str, ...]] = set()
        dir_meta: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    self._entry(tree, tar, member, layer, created, dir_meta)
            # Children change a directory's mtime, and a read-only directory mode would stop
            # a rootless unpack from filling it: directories get both last.
            for parts, m in reversed(dir_meta):
                self._finish_dir(tree, parts, m)
        except tarfile.TarError as exc:
            raise LayerError(
                f"layer {layer}: not a readable tar stream: {exc}.",
                hint="the image archive is damaged or was not written by an OCI/docker tool",
            ) from exc
        finally:
            tree.close()

    def _refuse(self, layer: str, name: str, why: str, hint: str = _ESCAPE_HINT) -> LayerError:
        return LayerError(f"layer {layer}: entry '{name}' refused: {why}.", hint=hint)

    def _entry(
        self,
        tree: _Tree,
        tar: tarfile.TarFile,
        m: tarfile.TarInfo,
        layer: str,
        created: set[tuple[str, ...]],
        dir_meta: list[tuple[tuple[str, ...], tarfile.TarInfo]],
    ) -> None:
        why = _check_name(m.name)
        if why:
            raise self._refuse(layer, m.name, why)
        parts = _split(m.name)
        self.stats.entries += 1
        if not parts:
            return  # the root itself ("./"): its metadata belongs to the target
        base = parts[-1]
        try:
            if base == OPAQUE_MARKER:
                self._opaque(tree, parts[:-1], created)
                return
            if base.startswith(WHITEOUT_PREFIX):
                hidden = base[len(WHITEOUT_PREFIX) :]
                if hidden in ("", ".", ".."):
                    raise self._refuse(
                        layer, m.name, "whiteout of an invalid name", _MALFORMED_HINT
                    )
                self._whiteout(tree, (*parts[:-1], hidden), created)
                return
            self._write(tree, tar, m, parts, layer, dir_meta)
        except NotADirectoryError as exc:
            where = str(exc.args[0]) if exc.args else "?"
            target = _symlink_text(tree, _split(where))
            if target:
                why, hint = (
                    f"it would be written through the symlink '{where}' -> '{target}'",
                    _ESCAPE_HINT,
                )
            else:
                why, hint = f"its parent '{where}' is not a directory", _MALFORMED_HINT
            raise self._refuse(layer, m.name, why, hint) from exc
        # Ancestors count as written too: a whiteout or opaque marker later in this layer
        # must not remove the directories that hold this layer's own entries.
        for i in range(1, len(parts) + 1):
            created.add(parts[:i])

    def _opaque(
        self, tree: _Tree, dir_parts: tuple[str, ...], created: set[tuple[str, ...]]
    ) -> None:
        self.stats.whiteouts += 1
        with tree.parent((*dir_parts, "x"), create=True) as fd:
            self._prune(fd, dir_parts, created)

    def _prune(self, fd: int, dir_parts: tuple[str, ...], created: set[tuple[str, ...]]) -> None:
        """Remove what lower layers left under a directory, keeping this layer's entries."""
        for child in os.listdir(fd):
            path = (*dir_parts, child)
            if path not in created:
                _remove(child, fd)
                continue
            st = _lstat(child, fd)
            if st is not None and stat.S_ISDIR(st.st_mode):
                cfd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._prune(cfd, path, created)
                finally:
                    os.close(cfd)

    def _whiteout(self, tree: _Tree, parts: tuple[str, ...], created: set[tuple[str, ...]]) -> None:
        self.stats.whiteouts += 1
        if parts in created:
            return
        try:
            with tree.parent(parts, create=False) as fd:
                _remove(parts[-1], fd)
        except FileNotFoundError:
            pass  # hiding something no lower layer had is a no-op

    def _write(
        self,
        tree: _Tree,
        tar: tarfile.TarFile,
        m: tarfile.TarInfo,
        parts: tuple[str, ...],
        layer: str,
        dir_meta: list[tuple[tuple[str, ...], tarfile.TarInfo]],
    ) -> None:
        name = parts[-1]
        if m.issym() and _symlink_escapes(parts, m.linkname):
            raise self._refuse(layer, m.name, f"symlink target '{m.linkname}' leaves the root")
        if (m.ischr() or m.isblk()) and not self.options.allow_devices:
            raise self._refuse(
                layer, m.name, "device nodes are not allowed in this image", _DEVICE_HINT
            )
        if m.islnk():
            why = _check_name(m.linkname) or ("" if _split(m.linkname) else "empty hardlink target")
            if why:
                raise self._refuse(layer, m.name, f"hardlink target '{m.linkname}': {why}")
        with tree.parent(parts, create=True) as fd:
            old = _lstat(name, fd)
            if m.isdir():
                if old is None or not stat.S_ISDIR(old.st_mode):
                    if old is not None:
                        _remove(name, fd)
                    os.mkdir(name, 0o700, dir_fd=fd)
                self._owner(name, fd, m)
                dir_meta.append((parts, m))
                return
            if old is not None:
                _remove(name, fd)
            if m.isreg():
                self._file(tar, m, name, fd)
            elif m.issym():
                os.symlink(m.linkname, name, dir_fd=fd)
                self._owner(name, fd, m)
            elif m.islnk():
                self._hardlink(tree, m, name, fd, layer)
                return  # a hardlink shares its target's metadata
            elif m.isfifo():
                os.mkfifo(name, stat.S_IMODE(m.mode), dir_fd=fd)
                self._owner(name, fd, m)
                os.chmod(name, stat.S_IMODE(m.mode), dir_fd=fd, follow_symlinks=True)
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                dev = os.makedev(m.devmajor, m.devminor)
                os.mknod(name, kind | stat.S_IMODE(m.mode), dev, dir_fd=fd)
                self._owner(name, fd, m)
                os.chmod(name, stat.S_IMODE(m.mode), dir_fd=fd, follow_symlinks=True)
            else:
                raise self._refuse(
                    layer, m.name, f"unsupported tar entry type {m.type!r}", _MALFORMED_HINT
                )
            os.utime(name, (m.mtime, m.mtime), dir_fd=fd, follow_symlinks=False)

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, name: str, dir_fd: int) -> None:
        src = tar.extractfile(m)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            if src is not None:
                while chunk := src.read(_COPY_CHUNK):
                    _write_all(out, chunk)
                    self.stats.bytes += len(chunk)
            self._meta_fd(out, m)
            self._xattrs_fd(out, m)
        finally:
            os.close(out)

    def _hardlink(
        self, tree: _Tree, m: tarfile.TarInfo, name: str, dir_fd: int, layer: str
    ) -> None:
        src_parts = _split(m.linkname)
        try:
            with tree.parent(src_parts, create=False) as sfd:
                st = _lstat(src_parts[-1], sfd)
                if st is None:
                    raise self._refuse(
                        layer,
                        m.name,
                        f"hardlink target '{m.linkname}' does not exist",
                        _MALFORMED_HINT,
                    )
                if stat.S_ISDIR(st.st_mode):
                    raise self._refuse(
                        layer,
                        m.name,
                        f"hardlink target '{m.linkname}' is a directory",
                        _MALFORMED_HINT,
                    )
                os.link(
                    src_parts[-1], name, src_dir_fd=sfd, dst_dir_fd=dir_fd, follow_symlinks=False
                )
        except NotADirectoryError as exc:
            raise self._refuse(
                layer, m.name, f"hardlink target '{m.linkname}' goes through a symlink"
            ) from exc
        except FileNotFoundError as exc:
            raise self._refuse(
                layer, m.name, f"hardlink target '{m.linkname}' does not exist", _MALFORMED_HINT
            ) from exc

    def _meta_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        # chown first: it clears setuid/setgid bits that chmod then restores.
        if self.options.keep_owner:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, stat.S_IMODE(m.mode))

    def _owner(self, name: str, dir_fd: int, m: tarfile.TarInfo) -> None:
        if self.options.keep_owner:
            os.chown(name, m.uid, m.gid, dir_fd=dir_fd, follow_symlinks=False)

    def _xattrs_fd(self, fd: int, m: tarfile.TarInfo) -> None:
        """File capabilities (ping's cap_net_raw) ride in SCHILY.xattr pax records."""
        if not self.options.keep_owner:
            return
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                # Best effort: the target filesystem may not support this namespace.
                with contextlib.suppress(OSError):
                    os.setxattr(fd, key[13:], value.encode("utf-8", "surrogateescape"))

    def _finish_dir(self, tree: _Tree, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        try:
            with tree.parent(parts, create=False) as fd:
                dfd = os.open(parts[-1], _DIR_FLAGS, dir_fd=fd)
                try:
                    os.fchmod(dfd, stat.S_IMODE(m.mode))
                    self._xattrs_fd(dfd, m)
                    os.utime(dfd, (m.mtime, m.mtime))
                finally:
                    os.close(dfd)
        except (FileNotFoundError, NotADirectoryError):
            pass  # replaced or removed by a later entry of the same layer


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
