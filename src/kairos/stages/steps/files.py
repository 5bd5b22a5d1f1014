"""`dns`, `downloads`, `directories` and `files`: content and metadata under the root.

Owners named by user name resolve through the root's /etc/passwd and /etc/group, never
the host's. A file without `permissions` gets 0644 (yip would chmod it to 0000).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import PurePosixPath

from kairos.context import Context
from kairos.errors import KairosError
from kairos.stages.accounts import Accounts
from kairos.stages.model import Ownership, Step
from kairos.stages.paths import ensure_dir, rooted, write_atomic

log = logging.getLogger("kairos.stages")

DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755
_B64 = ("b64", "base64")
_GZ = ("gz", "gzip")
_GZ_B64 = tuple(f"{g}+{b}" for g in _GZ for b in _B64)


def decode_content(content: str, encoding: str, where: str) -> bytes:
    """cloud-init/yip encodings: text, b64|base64, gz|gzip, gz+b64 and the other spellings."""
    enc = encoding.strip().lower()
    try:
        if enc in ("", "text", "text/plain", "plain"):
            return content.encode()
        if enc in _B64:
            return base64.b64decode(content, validate=False)
        if enc in _GZ_B64:
            return gzip.decompress(base64.b64decode(content, validate=False))
        if enc in _GZ:
            # Raw gzip only survives YAML as latin-1 text; the bytes are the code points.
            return gzip.decompress(content.encode("latin-1"))
    except (binascii.Error, OSError, EOFError, ValueError) as exc:
        raise KairosError(f"{where}: content is not valid {enc}: {exc}.") from None
    raise KairosError(
        f"{where}: unknown encoding {encoding!r}.",
        hint="use b64, base64, gz, gzip, gz+b64, gzip+base64 or leave it out for plain text",
    )


def owner_ids(ctx: Context, own: Ownership, accounts: Accounts | None = None) -> tuple[int, int]:
    """(uid, gid) for a file: `owner_string` first, then numeric ids, root by default."""
    if own.owner_string:
        return (accounts or Accounts(ctx)).resolve_owner(own.owner_string)
    return (own.owner or 0, own.group or 0)


def _chown(path: os.PathLike[str] | str, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)
    elif (uid, gid) != (os.geteuid(), os.getegid()):
        log.warning("%s: not root, owner %d:%d not set.", path, uid, gid)


def apply_dns(step: Step, ctx: Context) -> None:
    dns = step.dns
    if dns is None:
        return
    lines = [f"nameserver {ns}" for ns in dns.nameservers]
    if dns.search:
        lines.append("search " + " ".join(dns.search))
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    target = rooted(ctx, dns.path, follow_last=False)
    if target.is_symlink():
        # A resolv.conf managed by systemd-resolved is a link; replace it with our file.
        target.unlink()
    write_atomic(ctx, dns.path, ("\n".join(lines) + "\n").encode(), DEFAULT_FILE_MODE)


def apply_directories(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx) if any(d.ownership.owner_string for d in step.directories) else None
    for d in step.directories:
        path = ensure_dir(ctx, d.path)
        os.chmod(path, DEFAULT_DIR_MODE if d.permissions is None else d.permissions)
        uid, gid = owner_ids(ctx, d.ownership, accounts)
        _chown(path, uid, gid)


def apply_files(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx) if any(f.ownership.owner_string for f in step.files) else None
    for i, f in enumerate(step.files):
        data = decode_content(f.content, f.encoding, f"{step.where}: files[{i}] {f.path}")
        uid, gid = owner_ids(ctx, f.ownership, accounts)
        mode = DEFAULT_FILE_MODE if f.permissions is None else f.permissions
        path = write_atomic(ctx, f.path, data, mode)
        _chown(path, uid, gid)


def _download_target(ctx: Context, path: str, url: str) -> str:
    if path.endswith("/") or rooted(ctx, path).is_dir():
        name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "index.html"
        return str(PurePosixPath(path) / name)
    return path


def apply_downloads(step: Step, ctx: Context) -> None:
    for d in step.downloads:
        scheme = urllib.parse.urlsplit(d.url).scheme.lower()
        if scheme not in ("http", "https", "file"):
            log.warning(
                "%s: %s: download from %r is not supported yet (only http, https and file "
                "URLs; registries come later), skipped.",
                step.where,
                step.op_name,
                d.url,
            )
            continue
        try:
            with urllib.request.urlopen(d.url, timeout=d.timeout) as response:
                data = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise KairosError(
                f"{step.where}: download {d.url} failed: {exc}.", hint="check the URL and network"
            ) from None
        target = _download_target(ctx, d.path, d.url)
        path = write_atomic(
            ctx, target, data, DEFAULT_FILE_MODE if d.permissions is None else d.permissions
        )
        uid, gid = owner_ids(ctx, d.ownership)
        _chown(path, uid, gid)
