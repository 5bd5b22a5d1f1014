"""SHA-512 crypt (`$6$`), the password hash glibc, shadow and yip write to /etc/shadow.

Pure Python because the `crypt` module is gone from Python 3.13 and the initramfs has no
`openssl passwd`. Follows Ulrich Drepper's specification ("Unix crypt using SHA-256 and
SHA-512"), including its `rounds=` parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUNDS_DEFAULT = 5000
_ROUNDS_MIN = 1000
_ROUNDS_MAX = 999_999_999
_SALT_MAX = 16

# The spec's byte permutation for the final base-64 encoding: groups of three bytes.
_ORDER = (
    (0, 21, 42),
    (22, 43, 1),
    (44, 2, 23),
    (3, 24, 45),
    (25, 46, 4),
    (47, 5, 26),
    (6, 27, 48),
    (28, 49, 7),
    (50, 8, 29),
    (9, 30, 51),
    (31, 52, 10),
    (53, 11, 32),
    (12, 33, 54),
    (34, 55, 13),
    (56, 14, 35),
    (15, 36, 57),
    (37, 58, 16),
    (59, 17, 38),
    (18, 39, 60),
    (40, 61, 19),
    (62, 20, 41),
)


def _b64(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        out.append(_ALPHABET[value & 0x3F])
        value >>= 6
    return "".join(out)


def _repeat(digest: bytes, length: int) -> bytes:
    return (digest * (length // len(digest) + 1))[:length]


def _sha512_crypt_raw(password: bytes, salt: bytes, rounds: int) -> bytes:
    b = hashlib.sha512(password + salt + password).digest()
    a = hashlib.sha512(password + salt)
    a.update(_repeat(b, len(password)))
    n = len(password)
    while n:
        a.update(b if n & 1 else password)
        n >>= 1
    a_digest = a.digest()

    dp = hashlib.sha512(password * len(password)).digest()
    p = _repeat(dp, len(password))
    ds = hashlib.sha512(salt * (16 + a_digest[0])).digest()
    s = _repeat(ds, len(salt))

    c = a_digest
    for i in range(rounds):
        h = hashlib.sha512(p if i & 1 else c)
        if i % 3:
            h.update(s)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    return c


def sha512_crypt(password: str, salt: str | None = None, rounds: int | None = None) -> str:
    """Hash `password` as `$6$[rounds=N$]salt$hash`; a random 16-character salt by default."""
    if salt is None:
        salt = "".join(secrets.choice(_ALPHABET) for _ in range(_SALT_MAX))
    salt = salt[:_SALT_MAX]
    if "$" in salt or ":" in salt or "\n" in salt:
        raise ValueError("salt must not contain '$', ':' or newlines")
    prefix = "$6$"
    effective = ROUNDS_DEFAULT
    if rounds is not None:
        effective = min(max(rounds, _ROUNDS_MIN), _ROUNDS_MAX)
        prefix += f"rounds={effective}$"
    c = _sha512_crypt_raw(password.encode(), salt.encode(), effective)
    encoded = "".join(_b64((c[x] << 16) | (c[y] << 8) | c[z], 4) for x, y, z in _ORDER)
    encoded += _b64(c[63], 2)
    return f"{prefix}{salt}${encoded}"


def verify(password: str, hashed: str) -> bool:
    """True when `password` matches a `$6$` hash (constant-time comparison)."""
    parts = hashed.split("$")
    if len(parts) < 4 or parts[1] != "6":
        return False
    rounds: int | None = None
    salt = parts[2]
    if salt.startswith("rounds=") and len(parts) == 5:
        try:
            rounds = int(salt.removeprefix("rounds="))
        except ValueError:
            return False
        salt = parts[3]
    return hmac.compare_digest(sha512_crypt(password, salt, rounds), hashed)


def is_hash(value: str) -> bool:
    """yip's rule: a `passwd` value starting with `$` is already a crypt hash."""
    return value.startswith("$")
