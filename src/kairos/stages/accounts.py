"""The root's own account files (/etc/passwd, shadow, group, gshadow), read and written directly.

No useradd: the initramfs and minimal roots lack it, and names must resolve through the
root's files, never the host's. Lines we do not touch are kept byte for byte.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from kairos.context import Context
from kairos.errors import KairosError
from kairos.stages.paths import read_text, rooted, write_atomic

_FILES = {"passwd": 7, "shadow": 9, "group": 4, "gshadow": 4}
# Modes a distribution ships these files with; a new file gets the same.
_MODES = {"passwd": 0o644, "shadow": 0o640, "group": 0o644, "gshadow": 0o640}
FIRST_UID = 1000
LAST_UID = 59999
FIRST_SYSTEM_UID = 100


@dataclass
class Table:
    """One colon-separated file as rows; `None` rows are lines kept as they were."""

    name: str
    rows: list[list[str]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    exists: bool = False
    dirty: bool = False

    def find(self, key: str) -> list[str] | None:
        for row in self.rows:
            if row and row[0] == key:
                return row
        return None

    def upsert(self, row: list[str]) -> None:
        width = _FILES[self.name]
        row = (row + [""] * width)[:width]
        for i, existing in enumerate(self.rows):
            if existing and existing[0] == row[0]:
                if existing != row:
                    self.rows[i] = row
                    self.dirty = True
                return
        self.rows.append(row)
        self.dirty = True


def _load(ctx: Context, name: str) -> Table:
    text = read_text(ctx, f"/etc/{name}")
    table = Table(name, exists=rooted(ctx, f"/etc/{name}").exists())
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            table.rows.append(line.split(":"))
        else:
            table.rows.append([])  # blank or comment: kept by position
            table.raw.append(line)
    return table


class Accounts:
    """Load once, change, then `save()`: each changed file is replaced atomically."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.passwd = _load(ctx, "passwd")
        self.shadow = _load(ctx, "shadow")
        self.group = _load(ctx, "group")
        self.gshadow = _load(ctx, "gshadow")

    # -- lookups ---------------------------------------------------------------
    def user(self, name: str) -> list[str] | None:
        return self.passwd.find(name)

    def group_row(self, name: str) -> list[str] | None:
        return self.group.find(name)

    def uid_of(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        row = self.user(name)
        if row is None:
            raise KairosError(
                f"user {name!r} does not exist in {self.ctx.path('/etc/passwd')}.",
                hint="create it in an earlier step (users:) or use a numeric id",
            )
        return int(row[2])

    def gid_of(self, name: str) -> int:
        if name.isdigit():
            return int(name)
        row = self.group_row(name)
        if row is None:
            raise KairosError(
                f"group {name!r} does not exist in {self.ctx.path('/etc/group')}.",
                hint="create it first or use a numeric id",
            )
        return int(row[2])

    def resolve_owner(self, spec: str) -> tuple[int, int]:
        """`user[:group]` -> (uid, gid); the group defaults to the user's primary group."""
        user, _, group = spec.partition(":")
        uid = self.uid_of(user) if user else 0
        if group:
            return uid, self.gid_of(group)
        row = self.user(user) if user and not user.isdigit() else None
        return uid, int(row[3]) if row else uid

    def _used(self, table: Table) -> set[int]:
        return {int(r[2]) for r in table.rows if len(r) > 2 and r[2].isdigit()}

    def free_uid(self, system: bool = False, prefer: int | None = None) -> int:
        used = self._used(self.passwd)
        if prefer is not None and prefer not in used:
            return prefer
        lo, hi = (FIRST_SYSTEM_UID, FIRST_UID - 1) if system else (FIRST_UID, LAST_UID)
        if system:  # system ids are handed out downwards, as adduser does
            return next(i for i in range(hi, lo - 1, -1) if i not in used)
        return next(i for i in range(lo, hi + 1) if i not in used)

    def free_gid(self, system: bool = False, prefer: int | None = None) -> int:
        used = self._used(self.group)
        if prefer is not None and prefer not in used:
            return prefer
        lo, hi = (FIRST_SYSTEM_UID, FIRST_UID - 1) if system else (FIRST_UID, LAST_UID)
        if system:
            return next(i for i in range(hi, lo - 1, -1) if i not in used)
        return next(i for i in range(lo, hi + 1) if i not in used)

    # -- changes -----------------------------------------------------------------
    def ensure_group(self, name: str, gid: int | None = None, system: bool = False) -> int:
        row = self.group_row(name)
        if row is not None:
            return int(row[2])
        gid = self.free_gid(system) if gid is None else gid
        self.group.upsert([name, "x", str(gid), ""])
        if self.gshadow.exists:
            self.gshadow.upsert([name, "!", "", ""])
        return gid

    def add_member(self, group: str, user: str) -> None:
        for table, idx in ((self.group, 3), (self.gshadow, 3)):
            row = table.find(group)
            if row is None:
                continue
            members = [m for m in row[idx].split(",") if m]
            if user not in members:
                members.append(user)
                table.upsert([*row[:idx], ",".join(members)])

    def set_user(self, name: str, uid: int, gid: int, gecos: str, home: str, shell: str) -> None:
        self.passwd.upsert([name, "x", str(uid), str(gid), gecos, home, shell])

    def set_password(self, name: str, hashed: str) -> None:
        row = self.shadow.find(name)
        days = str(int(time.time() // 86400))
        if row is not None and row[1] == hashed:
            return  # unchanged: keep the last-change date too
        if row is None:
            self.shadow.upsert([name, hashed, days, "0", "99999", "7", "", "", ""])
        else:
            self.shadow.upsert([name, hashed, days, *row[3:]])

    def password_of(self, name: str) -> str | None:
        row = self.shadow.find(name)
        return row[1] if row else None

    def save(self) -> None:
        for table in (self.passwd, self.group, self.shadow, self.gshadow):
            if not table.dirty:
                continue
            node = f"/etc/{table.name}"
            comments = iter(table.raw)
            lines = [":".join(r) if r else next(comments, "") for r in table.rows]
            data = ("\n".join(lines) + "\n").encode()
            path = rooted(self.ctx, node)
            mode, uid, gid = _MODES[table.name], 0, 0
            if path.exists():
                st = path.stat()
                mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
            elif table.name in ("shadow", "gshadow"):
                shadow_gid = self.group.find("shadow")
                gid = int(shadow_gid[2]) if shadow_gid else 0
            owned = _can_chown()
            write_atomic(self.ctx, node, data, mode, uid if owned else None, gid if owned else None)
            table.dirty = False


def _can_chown() -> bool:
    return os.geteuid() == 0
