"""fetch_text: http (served from a thread on 127.0.0.1), file URLs, and every failure's message."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kairos.config.fetch import FetchError, fetch_text
from kairos.errors import KairosError

PAGES: dict[str, tuple[int, bytes]] = {
    "/ok.yaml": (200, b"#cloud-config\nname: served\n"),
    "/big.yaml": (200, b"#" * 5000),
    "/latin1.yaml": (200, b"#cloud-config\nname: caf\xe9\n"),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        code, body = PAGES.get(self.path, (404, b"not found"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http(server: str) -> None:
    assert fetch_text(f"{server}/ok.yaml") == "#cloud-config\nname: served\n"


def test_http_error_names_url_and_status(server: str) -> None:
    with pytest.raises(KairosError) as info:
        fetch_text(f"{server}/missing.yaml")
    assert info.value.message == f"{server}/missing.yaml: HTTP 404 Not Found."
    assert info.value.hint
    assert isinstance(info.value, FetchError) and not info.value.transient


def test_size_cap(server: str) -> None:
    assert len(fetch_text(f"{server}/big.yaml", max_bytes=5000)) == 5000
    with pytest.raises(KairosError, match="larger than 4999 bytes"):
        fetch_text(f"{server}/big.yaml", max_bytes=4999)


def test_not_utf8(server: str) -> None:
    with pytest.raises(KairosError, match="not UTF-8"):
        fetch_text(f"{server}/latin1.yaml")


def test_unreachable_is_an_error_with_a_hint() -> None:
    # A port nothing listens on: connection refused, at once.
    with pytest.raises(KairosError) as info:
        fetch_text("http://127.0.0.1:9/c.yaml", timeout=2)
    assert "unreachable" in info.value.message
    assert info.value.hint
    assert isinstance(info.value, FetchError) and info.value.transient


def test_file_urls_and_plain_paths(tmp_path: Path) -> None:
    f = tmp_path / "a b.yaml"
    f.write_text("#cloud-config\n")
    assert fetch_text(f"file://{tmp_path}/a%20b.yaml") == "#cloud-config\n"
    assert fetch_text(str(f)) == "#cloud-config\n"
    with pytest.raises(KairosError, match="cannot read"):
        fetch_text(f"file://{tmp_path}/missing.yaml")
    with pytest.raises(KairosError, match="larger than 3 bytes"):
        fetch_text(str(f), max_bytes=3)


@pytest.mark.parametrize("url", ["ftp://h/x.yaml", "relative/x.yaml", "tftp://h/c"])
def test_unsupported_schemes(url: str) -> None:
    with pytest.raises(KairosError, match="unsupported URL scheme") as info:
        fetch_text(url)
    assert info.value.hint is not None and "http://" in info.value.hint
