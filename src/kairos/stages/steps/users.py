"""`users` and `authorized_keys`: accounts written straight into the root's /etc files.

Plain passwords are hashed with SHA-512 crypt; values starting with `$` are taken as
hashes, `!`/`*` as locked markers. Homes and key files are owned by the ids the root's own
files give, never the host's.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import PurePosixPath

from kairos.context import Context
from kairos.errors import KairosError
from kairos.stages.accounts import Accounts
from kairos.stages.crypt import is_hash, sha512_crypt, verify
from kairos.stages.model import Step, User
from kairos.stages.paths import ensure_dir, read_text, rooted, write_atomic

log = logging.getLogger("kairos.stages")

DEFAULT_SHELL = "/bin/sh"
# Homes are not world-readable, as Debian 12's adduser makes them.
HOME_MODE = 0o750
_LOCKED = ("!", "*", "!!", "!*")


def _hash(user: User, current: str | None) -> str | None:
    """The shadow password field to write, or None to leave it as it is."""
    hashed: str | None = None
    if user.passwd:
        if is_hash(user.passwd) or user.passwd in _LOCKED:
            hashed = user.passwd
        elif current and verify(user.passwd, current.lstrip("!")):
            # Boot stages run at every boot: keep the hash (and its salt) when it still matches.
            hashed = current.lstrip("!")
        else:
            hashed = sha512_crypt(user.passwd)
    elif current is None:
        hashed = "!"  # a new user without a password cannot log in with one
    if user.lock_passwd:
        base = hashed if hashed is not None else (current or "")
        hashed = base if base.startswith("!") else "!" + base
    return hashed


def _chown(path: os.PathLike[str] | str, uid: int, gid: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, uid, gid, follow_symlinks=False)


def _make_home(ctx: Context, home: str, uid: int, gid: int) -> None:
    path = rooted(ctx, home)
    fresh = not path.exists()
    ensure_dir(ctx, home, HOME_MODE)
    _chown(path, uid, gid)
    skel = rooted(ctx, "/etc/skel")
    if fresh and skel.is_dir():
        shutil.copytree(skel, path, symlinks=True, dirs_exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                _chown(os.path.join(dirpath, name), uid, gid)
    if fresh:
        os.chmod(path, HOME_MODE)


def apply_user(ctx: Context, accounts: Accounts, user: User) -> tuple[int, int, str]:
    """Create or update one account (not saved yet); returns (uid, gid, home)."""
    existing = accounts.user(user.name)
    if user.uid is not None:
        uid = user.uid
        taken = next((r[0] for r in accounts.passwd.rows if r[2:3] == [str(uid)]), user.name)
        if taken != user.name:
            raise KairosError(f"users: {user.name}: uid {uid} already belongs to {taken!r}.")
    elif existing is not None:
        uid = int(existing[2])
    else:
        uid = accounts.free_uid(user.system)
    if user.primary_group:
        gid = accounts.ensure_group(user.primary_group, system=user.system)
    elif existing is not None:
        gid = int(existing[3])
    else:
        gid = accounts.ensure_group(user.name, accounts.free_gid(user.system, uid), user.system)
    home = user.homedir or (existing[5] if existing else f"/home/{user.name}")
    shell = user.shell or (existing[6] if existing else DEFAULT_SHELL)
    gecos = user.gecos or (existing[4] if existing else "")
    accounts.set_user(user.name, uid, gid, gecos, home, shell)
    hashed = _hash(user, accounts.password_of(user.name))
    if hashed is not None:
        accounts.set_password(user.name, hashed)
    for group in user.groups:
        if accounts.group_row(group) is None:
            log.info("creating group %r for user %r", group, user.name)
            accounts.ensure_group(group)
        accounts.add_member(group, user.name)
    return uid, gid, home


def apply_users(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx)
    homes = []
    for user in step.users:
        uid, gid, home = apply_user(ctx, accounts, user)
        if not user.no_create_home:
            homes.append((home, uid, gid))
    accounts.save()
    for home, uid, gid in homes:
        _make_home(ctx, home, uid, gid)
    for user in step.users:
        if user.ssh_authorized_keys:
            add_keys(ctx, accounts, user.name, user.ssh_authorized_keys)


def _fetch_keys(key: str) -> list[str]:
    """`github:USER` / `gitlab:USER`: the user's public keys from the forge."""
    forge, _, who = key.partition(":")
    url = f"https://{forge}.com/{who.strip()}.keys"
    from kairos.config.fetch import fetch_text

    return [line for line in fetch_text(url).splitlines() if line.strip()]


def add_keys(ctx: Context, accounts: Accounts, name: str, keys: tuple[str, ...]) -> None:
    row = accounts.user(name)
    if row is None:
        raise KairosError(
            f"authorized_keys: user {name!r} does not exist in the root's /etc/passwd.",
            hint="create the user first (a users: entry in the same or an earlier step)",
        )
    uid, gid, home = int(row[2]), int(row[3]), row[5]
    wanted: list[str] = []
    for key in keys:
        wanted.extend(_fetch_keys(key) if key.startswith(("github:", "gitlab:")) else [key])
    ssh_dir = str(PurePosixPath(home) / ".ssh")
    ensure_dir(ctx, ssh_dir, 0o700)
    os.chmod(rooted(ctx, ssh_dir), 0o700)
    _chown(rooted(ctx, ssh_dir), uid, gid)
    node = f"{ssh_dir}/authorized_keys"
    lines = [ln for ln in read_text(ctx, node).splitlines() if ln.strip()]
    lines += [k.strip() for k in wanted if k.strip() and k.strip() not in lines]
    path = write_atomic(ctx, node, ("\n".join(lines) + "\n").encode(), 0o600)
    _chown(path, uid, gid)


def apply_authorized_keys(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx)
    for name, keys in step.authorized_keys.items():
        add_keys(ctx, accounts, name, keys)
