"""Fetch a remote or local config (`config_url`, `validate URL`) with a size cap.

Standard library only: this runs on the node, in the initramfs and at install time.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from kairos.errors import KairosError

SCHEMES = ("http", "https", "file")


class FetchError(KairosError):
    """A fetch failed; `transient` when trying again later may work (network, 5xx)."""

    def __init__(self, message: str, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint)
        self.transient = transient


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _read_capped(stream: _Readable, url: str, max_bytes: int) -> bytes:
    # One byte past the cap tells "exactly at the limit" from "too big" without reading it all.
    # Loop: a socket may hand back fewer bytes than asked before the end of the body.
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        chunk = stream.read(max_bytes + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise KairosError(
            f"{url}: larger than {max_bytes} bytes.",
            hint="cloud-configs are small; check the URL points at the config itself",
        )
    return data


def _decode(data: bytes, url: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KairosError(
            f"{url}: not UTF-8 text (byte {exc.start}).",
            hint="a cloud-config is a UTF-8 YAML file",
        ) from None


def fetch_text(url: str, timeout: float = 10.0, max_bytes: int = 1 << 20) -> str:
    """Return the text at an http, https or file URL (a plain absolute path also works).

    Raises KairosError with a hint for an unsupported scheme, a network or HTTP failure,
    a missing file, a body over `max_bytes`, or bytes that are not UTF-8.
    """
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if scheme == "" and url.startswith("/"):
        scheme, path = "file", url
    elif scheme == "file":
        path = urllib.parse.unquote(parsed.path)
    elif scheme in ("http", "https"):
        path = ""
    else:
        raise KairosError(
            f"{url}: unsupported URL scheme {scheme or '(none)'!r}.",
            hint="use http://, https:// or file:// (or an absolute path)",
        )
    if scheme == "file":
        try:
            with Path(path).open("rb") as fh:
                return _decode(_read_capped(fh, url, max_bytes), url)
        except OSError as exc:
            raise KairosError(
                f"{url}: cannot read: {exc.strerror or exc}.", hint="check the path exists"
            ) from None
    request = urllib.request.Request(url, headers={"User-Agent": "kairos-agent"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return _decode(_read_capped(resp, url, max_bytes), url)
    except urllib.error.HTTPError as exc:
        raise FetchError(
            f"{url}: HTTP {exc.code} {exc.reason}.",
            hint="check the URL and the server",
            transient=exc.code >= 500 or exc.code == 429,
        ) from None
    except urllib.error.URLError as exc:
        raise FetchError(
            f"{url}: unreachable: {exc.reason}.",
            hint="check the network is up and the host name resolves",
            transient=True,
        ) from None
    except TimeoutError:
        raise FetchError(
            f"{url}: no answer within {timeout:g} s.",
            hint="check the server is reachable",
            transient=True,
        ) from None
    except OSError as exc:
        raise FetchError(
            f"{url}: cannot fetch: {exc}.", hint="check the URL", transient=True
        ) from None
