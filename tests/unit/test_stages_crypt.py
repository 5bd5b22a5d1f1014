"""sha512-crypt against the published vectors of Drepper's specification."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.stages.crypt import is_hash, sha512_crypt, verify

# From "Unix crypt using SHA-256 and SHA-512" (Ulrich Drepper), the SHA-512 test table.
VECTORS = [
    (
        "$6$saltstring",
        "Hello world!",
        "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1",
    ),
    (
        "$6$rounds=10000$saltstringsaltstring",
        "Hello world!",
        "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.",
    ),
    (
        "$6$rounds=5000$toolongsaltstring",
        "This is just a test",
        "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0",
    ),
    (
        "$6$rounds=10$roundstoolow",
        "the minimum number is still observed",
        "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX.",
    ),
]


def _split(setting: str) -> tuple[str, int | None]:
    parts = setting.split("$")
    if parts[2].startswith("rounds="):
        return parts[3], int(parts[2].removeprefix("rounds="))
    return parts[2], None


@pytest.mark.parametrize(("setting", "password", "expected"), VECTORS)
def test_published_vectors(setting: str, password: str, expected: str) -> None:
    salt, rounds = _split(setting)
    assert sha512_crypt(password, salt, rounds) == expected
    assert verify(password, expected)
    assert not verify(password + "x", expected)


def test_random_salt_differs_and_verifies() -> None:
    a, b = sha512_crypt("kairos"), sha512_crypt("kairos")
    assert a != b
    assert a.startswith("$6$") and len(a.split("$")[2]) == 16
    assert verify("kairos", a) and verify("kairos", b)


def test_bad_salt_and_foreign_hashes() -> None:
    with pytest.raises(ValueError):
        sha512_crypt("x", "bad$salt")
    assert not verify("x", "$1$abc$def")
    assert not verify("x", "!")
    assert is_hash("$6$a$b") and not is_hash("plain")


@settings(max_examples=20, deadline=None)
@given(st.text(max_size=40), st.text(alphabet="./abcXYZ019", min_size=1, max_size=16))
def test_roundtrip(password: str, salt: str) -> None:
    hashed = sha512_crypt(password, salt)
    assert verify(password, hashed)
