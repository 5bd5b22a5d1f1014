"""`ensure_entities` and `delete_entities`: whole lines of the root's account files.

An ensured entity replaces the line of the same name or is appended; a plain shadow
password is hashed (SHA-512 crypt) and `last_changed: now` becomes today, as yip's
entities library does. Deleting removes the line of that name.
"""

from __future__ import annotations

import time

from kairos.context import Context
from kairos.stages.accounts import Accounts, Table
from kairos.stages.crypt import is_hash, sha512_crypt
from kairos.stages.model import Entity, EntityKind, Step

_LOCKED = ("", "!", "*", "!!", "!*", "x")


def _table(accounts: Accounts, kind: EntityKind) -> Table:
    return {
        EntityKind.USER: accounts.passwd,
        EntityKind.GROUP: accounts.group,
        EntityKind.SHADOW: accounts.shadow,
        EntityKind.GSHADOW: accounts.gshadow,
    }[kind]


def _row(entity: Entity) -> list[str]:
    row = list(entity.fields)
    if entity.kind in (EntityKind.USER, EntityKind.GROUP) and not row[1]:
        row[1] = "x"
    if entity.kind is EntityKind.SHADOW:
        if row[1] not in _LOCKED and not is_hash(row[1]):
            row[1] = sha512_crypt(row[1])
        if row[2] == "now":
            row[2] = str(int(time.time() // 86400))
    return row


def apply_ensure(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx)
    for entity in step.ensure_entities:
        table = _table(accounts, entity.kind)
        table.upsert(_row(entity))
    accounts.save()


def apply_delete(step: Step, ctx: Context) -> None:
    accounts = Accounts(ctx)
    for entity in step.delete_entities:
        table = _table(accounts, entity.kind)
        kept = [row for row in table.rows if not row or row[0] != entity.name]
        if len(kept) != len(table.rows):
            table.rows, table.dirty = kept, True
    accounts.save()
