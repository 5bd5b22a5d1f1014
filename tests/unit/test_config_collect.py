"""Collecting a node's config: sources, order, header rules, templates, config_url, errors."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.config.collect import CONFIG_DIRS, MAX_URL_DEPTH, collect
from kairos.config.merge import merge
from kairos.context import Context
from kairos.errors import ConfigError

H = "#cloud-config\n"


def write(root: Path, node_path: str, text: str) -> Path:
    path = root / node_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ctx_for(root: Path, strict: bool = False) -> Context:
    return Context(root=root, strict=strict)


def test_upstream_dir_order_then_cmdline(tmp_path: Path) -> None:
    assert CONFIG_DIRS == ("/run/initramfs/live", "/etc/kairos", "/usr/local/cloud-config", "/oem")
    for i, d in enumerate(CONFIG_DIRS):
        write(tmp_path, f"{d}/config.yaml", f"{H}name: from-{i}\nlevel{i}: true\n")
    result = collect(ctx_for(tmp_path), cmdline="install.device=/dev/vdz")
    assert [d.source for d in result.documents] == [
        "/run/initramfs/live/config.yaml",
        "/etc/kairos/config.yaml",
        "/usr/local/cloud-config/config.yaml",
        "/oem/config.yaml",
        "cmdline",
    ]
    assert result.merged["name"] == "from-3"  # the later source wins
    assert all(result.merged[f"level{i}"] for i in range(4))
    assert result.merged["install"] == {"device": "/dev/vdz"}

    # The command line comes last: it beats every file.
    out = collect(ctx_for(tmp_path), cmdline="kairos.config=name=from-cmdline")
    assert out.merged["name"] == "from-cmdline"


_word = st.text(alphabet="abcdefgh", min_size=1, max_size=3)
_value = st.recursive(
    st.integers(0, 9) | _word | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_word, inner, max_size=3),
    max_leaves=10,
)
_placed = st.lists(
    st.tuples(st.sampled_from(CONFIG_DIRS), _word, st.dictionaries(_word, _value, max_size=4)),
    max_size=6,
    unique_by=lambda t: (t[0], t[1]),
)


@settings(max_examples=50, deadline=None)
@given(_placed)
def test_merged_is_every_file_merged_in_dir_then_name_order(
    placed: list[tuple[str, str, dict[str, object]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for directory, name, data in placed:
            write(root, f"{directory}/{name}.yaml", H + yaml.safe_dump(data))
        result = collect(ctx_for(root), cmdline="")
    ordered = sorted(placed, key=lambda t: (CONFIG_DIRS.index(t[0]), t[1]))
    assert [d.source for d in result.documents] == [f"{d}/{n}.yaml" for d, n, _ in ordered]
    expected: dict[str, object] = {}
    for _, _, data in ordered:
        expected = merge(expected, data)
    assert result.merged == expected


def test_files_in_a_dir_in_lexical_order_subdirs_included(tmp_path: Path) -> None:
    write(tmp_path, "/oem/90_custom.yaml", f"{H}name: ninety\n")
    write(tmp_path, "/oem/10_a.yaml", f"{H}name: ten\n")
    write(tmp_path, "/oem/50/inner.yml", f"{H}name: fifty\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert [d.source for d in result.documents] == [
        "/oem/10_a.yaml",
        "/oem/50/inner.yml",
        "/oem/90_custom.yaml",
    ]
    assert result.merged == {"name": "ninety"}


def test_stages_and_users_from_every_file_are_kept(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/kairos/a.yaml",
        f"{H}users: [{{name: a}}]\nstages:\n  boot:\n  - commands: [a]\n",
    )
    write(
        tmp_path, "/oem/b.yaml", f"{H}users: [{{name: b}}]\nstages:\n  boot:\n  - commands: [b]\n"
    )
    merged = collect(ctx_for(tmp_path), cmdline="").merged
    assert merged["users"] == [{"name": "a"}, {"name": "b"}]
    assert merged["stages"]["boot"] == [{"commands": ["a"]}, {"commands": ["b"]}]


@pytest.mark.parametrize(
    "header", ["#cloud-config", "#kairos-config", "#node-config", "#cloud-config  "]
)
def test_accepted_headers(tmp_path: Path, header: str) -> None:
    write(tmp_path, "/oem/a.yaml", f"{header}\nname: x\n")
    assert collect(ctx_for(tmp_path), cmdline="").merged == {"name": "x"}


def test_header_must_be_in_the_first_ten_lines(tmp_path: Path) -> None:
    write(tmp_path, "/oem/line10.yaml", "# c\n" * 9 + "#cloud-config\nname: ten\n")
    write(tmp_path, "/oem/line11.yaml", "# c\n" * 10 + "#cloud-config\nname: eleven\n")
    write(tmp_path, "/oem/spaced.yaml", "# cloud-config\nname: spaced\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged == {"name": "ten"}
    reasons = dict(result.skipped)
    assert reasons["/oem/line11.yaml"] == "no #cloud-config header in its first 10 lines"
    assert reasons["/oem/spaced.yaml"] == "no #cloud-config header in its first 10 lines"


def test_skipped_files_and_reasons(tmp_path: Path) -> None:
    write(tmp_path, "/oem/notes.txt", f"{H}name: txt\n")
    write(tmp_path, "/oem/config.json", f"{H}name: json\n")
    big = write(tmp_path, "/oem/big.yaml", H + "# pad\n" * 200_000)
    (tmp_path / "oem/latin1.yaml").write_bytes(b"#cloud-config\nname: caf\xe9\n")
    write(tmp_path, "/oem/ok.yml", f"{H}name: ok\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged == {"name": "ok"}
    reasons = dict(result.skipped)
    assert reasons["/oem/notes.txt"] == "not a .yaml or .yml file"
    assert reasons["/oem/config.json"] == "not a .yaml or .yml file"
    assert reasons["/oem/big.yaml"] == f"too big ({big.stat().st_size} bytes, limit 1048576)"
    assert reasons["/oem/latin1.yaml"].startswith("not UTF-8 text")
    assert result.warnings == ()


def test_a_file_of_exactly_one_mib_counts(tmp_path: Path) -> None:
    body = H + "name: edge\n"
    write(tmp_path, "/oem/edge.yaml", body + "#" * ((1 << 20) - len(body) - 1) + "\n")
    assert collect(ctx_for(tmp_path), cmdline="").merged == {"name": "edge"}


def test_header_only_file_counts_and_adds_nothing(tmp_path: Path) -> None:
    write(tmp_path, "/oem/empty.yaml", H)
    result = collect(ctx_for(tmp_path), cmdline="")
    assert [d.source for d in result.documents] == ["/oem/empty.yaml"]
    assert result.merged == {}


def test_templates_render_per_file_with_node_values(tmp_path: Path) -> None:
    write(tmp_path, "/etc/machine-id", "c0ffee1234\n")
    write(tmp_path, "/oem/a.yaml", H + "hostname: kairoslab-{{ trunc 4 .MachineID }}\n")
    write(tmp_path, "/oem/b.yaml", H + "name: '{{ .Random | len }}'\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged == {"hostname": "kairoslab-c0ff", "name": "32"}


def test_each_file_gets_its_own_random(tmp_path: Path) -> None:
    write(tmp_path, "/oem/a.yaml", H + "a: '{{ .Random }}'\nsame: '{{ .Random }}'\n")
    write(tmp_path, "/oem/b.yaml", H + "b: '{{ .Random }}'\n")
    merged = collect(ctx_for(tmp_path), cmdline="").merged
    assert merged["a"] == merged["same"]  # one render, one value
    assert merged["a"] != merged["b"]
    assert len(merged["a"]) == 32


def test_lines_are_those_of_the_source_file(tmp_path: Path) -> None:
    write(tmp_path, "/oem/a.yaml", H + "# comment\ninstall:\n  device: /dev/vda\n")
    doc = collect(ctx_for(tmp_path), cmdline="").documents[0]
    assert doc.source == "/oem/a.yaml"
    assert doc.line_of(("install", "device")) == 4


BROKEN = {
    "/oem/10_template.yaml": H + "a: 1\nhostname: {{ frob .MachineID }}\n",
    "/oem/20_yaml.yaml": H + "install:\n  device: [unclosed\n",
    "/oem/30_list.yaml": H + "- just\n- a list\n",
}


def test_broken_sources_are_left_out_with_a_warning(tmp_path: Path) -> None:
    for path, text in BROKEN.items():
        write(tmp_path, path, text)
    write(tmp_path, "/oem/40_good.yaml", H + "name: good\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged == {"name": "good"}
    assert len(result.warnings) == 3
    assert result.warnings[0].startswith('/oem/10_template.yaml:3: template: function "frob"')
    assert result.warnings[1].startswith("/oem/20_yaml.yaml:4:")
    assert result.warnings[2].startswith("/oem/30_list.yaml:1: the top level must be a map")
    reasons = dict(result.skipped)
    assert set(reasons) == set(BROKEN)
    assert reasons["/oem/10_template.yaml"].startswith('line 3: template: function "frob"')
    assert reasons["/oem/20_yaml.yaml"].startswith("line 4:")


def test_strict_reports_every_broken_source_at_once(tmp_path: Path) -> None:
    for path, text in BROKEN.items():
        write(tmp_path, path, text)
    with pytest.raises(ConfigError) as info:
        collect(ctx_for(tmp_path, strict=True), cmdline="")
    err = info.value
    assert err.message == "3 config source(s) cannot be used."
    assert [p.split(":")[0] for p in err.problems] == list(BROKEN)


def test_cmdline_is_read_under_the_root(tmp_path: Path) -> None:
    assert collect(ctx_for(tmp_path)).documents == ()  # no /proc/cmdline: nothing
    write(tmp_path, "/proc/cmdline", "quiet install.device=/dev/vdc\n")
    result = collect(ctx_for(tmp_path))
    assert result.merged == {"install": {"device": "/dev/vdc"}}
    assert collect(ctx_for(tmp_path), use_cmdline=False).merged == {}


def test_explicit_files_need_no_header_and_come_before_the_cmdline(tmp_path: Path) -> None:
    write(tmp_path, "/oem/a.yaml", f"{H}name: oem\ninstall: {{device: /dev/a}}\n")
    extra = tmp_path / "given.conf"
    extra.write_text("name: given\n")
    result = collect(ctx_for(tmp_path), extra_files=[extra], cmdline="install.device=/dev/c")
    assert [d.source for d in result.documents] == ["/oem/a.yaml", "/given.conf", "cmdline"]
    assert result.merged == {"name": "given", "install": {"device": "/dev/c"}}


def test_symlinked_dirs_are_not_entered(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    write(outside, "/x.yaml", f"{H}name: outside\n")
    (tmp_path / "oem").mkdir()
    (tmp_path / "oem/link").symlink_to(outside)
    (tmp_path / "oem/file.yaml").symlink_to(outside / "x.yaml")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert [d.source for d in result.documents] == ["/oem/file.yaml"]


# ---------------------------------------------------------------- config_url

PAGES: dict[str, str] = {}
# path -> how many more requests get "503 Service Unavailable" before the page is served
FAILURES: dict[str, int] = {}
REQUESTS: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        REQUESTS.append(self.path)
        if FAILURES.get(self.path, 0) > 0:
            FAILURES[self.path] -= 1
            self.send_error(503)
            return
        body = PAGES.get(self.path)
        self.send_response(200 if body is not None else 404)
        data = (body or "").encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    PAGES.clear()
    FAILURES.clear()
    REQUESTS.clear()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_config_url_is_fetched_recursively_and_wins(tmp_path: Path, server: str) -> None:
    PAGES["/a.yaml"] = f"{H}config_url: {server}/b.yaml\nname: a\nusers: [{{name: a}}]\n"
    PAGES["/b.yaml"] = f"{H}name: b\nusers: [{{name: b}}]\ninstall: {{auto: true}}\n"
    write(tmp_path, "/oem/00.yaml", f"{H}config_url: {server}/a.yaml\nname: local\n")
    write(tmp_path, "/oem/99.yaml", f"{H}install: {{device: /dev/vda}}\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert [d.source for d in result.documents] == [
        "/oem/00.yaml",
        f"{server}/a.yaml",
        f"{server}/b.yaml",
        "/oem/99.yaml",
    ]
    assert result.merged["name"] == "b"
    assert result.merged["users"] == [{"name": "a"}, {"name": "b"}]
    assert result.merged["install"] == {"auto": True, "device": "/dev/vda"}
    assert result.warnings == ()


def test_config_url_from_the_cmdline_with_a_template(tmp_path: Path, server: str) -> None:
    write(tmp_path, "/sys/class/dmi/id/product_name", "Standard PC & co\n")
    PAGES["/c?p=Standard+PC+%26+co"] = f"{H}name: by-product\n"
    result = collect(
        ctx_for(tmp_path), cmdline=f"config_url={server}/c?p={{{{.Values.product.name}}}}"
    )
    assert result.merged["name"] == "by-product"
    assert result.documents[-1].source == f"{server}/c?p=Standard+PC+%26+co"


def test_unreachable_config_url_is_a_warning(tmp_path: Path, server: str) -> None:
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: {server}/missing.yaml\nname: kept\n")
    result = collect(ctx_for(tmp_path, strict=True), cmdline="")
    assert result.merged["name"] == "kept"
    assert len(result.warnings) == 1
    assert "HTTP 404" in result.warnings[0] and result.warnings[0].startswith("/oem/a.yaml:")
    assert result.skipped[0][0] == f"{server}/missing.yaml"


@pytest.fixture
def no_retry_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.config.collect.URL_RETRY_DELAY", 0.0)


def test_transient_failures_are_retried(tmp_path: Path, server: str, no_retry_delay: None) -> None:
    PAGES["/flaky.yaml"] = f"{H}name: third-time\n"
    FAILURES["/flaky.yaml"] = 2
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: {server}/flaky.yaml\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged["name"] == "third-time"
    assert REQUESTS == ["/flaky.yaml"] * 3
    assert result.warnings == ()


def test_retries_give_up_after_three_attempts(
    tmp_path: Path, server: str, no_retry_delay: None
) -> None:
    PAGES["/down.yaml"] = f"{H}name: never\n"
    FAILURES["/down.yaml"] = 3
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: {server}/down.yaml\nname: kept\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged["name"] == "kept"
    assert REQUESTS == ["/down.yaml"] * 3
    assert "HTTP 503" in result.warnings[0]


def test_permanent_failures_are_not_retried(tmp_path: Path, server: str) -> None:
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: {server}/missing.yaml\n")
    collect(ctx_for(tmp_path), cmdline="")
    assert REQUESTS == ["/missing.yaml"]


def test_unreachable_host_is_retried_then_warned(tmp_path: Path, no_retry_delay: None) -> None:
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: http://127.0.0.1:9/c.yaml\nname: kept\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged["name"] == "kept"
    assert "unreachable" in result.warnings[0]


def test_fetched_config_without_header_is_skipped(tmp_path: Path, server: str) -> None:
    PAGES["/plain.yaml"] = "name: no-header\n"
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: {server}/plain.yaml\nname: kept\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert result.merged["name"] == "kept"
    assert dict(result.skipped)[f"{server}/plain.yaml"].startswith("no #cloud-config header")


def test_config_url_loops_stop(tmp_path: Path, server: str) -> None:
    PAGES["/a.yaml"] = f"{H}config_url: {server}/b.yaml\nname: a\n"
    PAGES["/b.yaml"] = f"{H}config_url: {server}/a.yaml\nname: b\n"
    write(tmp_path, "/oem/x.yaml", f"{H}config_url: {server}/a.yaml\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert len(result.documents) == 3
    assert result.merged["name"] == "b"
    assert any("a loop" in w for w in result.warnings)


def test_config_url_depth_limit(tmp_path: Path, server: str) -> None:
    for i in range(10):
        PAGES[f"/{i}.yaml"] = f"{H}config_url: {server}/{i + 1}.yaml\nname: n{i}\n"
    write(tmp_path, "/oem/x.yaml", f"{H}config_url: {server}/0.yaml\n")
    result = collect(ctx_for(tmp_path), cmdline="")
    assert len(result.documents) == 1 + MAX_URL_DEPTH
    assert result.merged["name"] == f"n{MAX_URL_DEPTH - 1}"
    assert any(f"deeper than {MAX_URL_DEPTH}" in w for w in result.warnings)


def test_file_config_url(tmp_path: Path) -> None:
    remote = tmp_path / "remote.yaml"
    remote.write_text(f"{H}name: from-file\n")
    write(tmp_path, "/oem/a.yaml", f"{H}config_url: file://{remote}\n")
    assert collect(ctx_for(tmp_path), cmdline="").merged["name"] == "from-file"


def test_fetch_can_be_replaced(tmp_path: Path) -> None:
    calls: list[str] = []

    def fake(url: str) -> str:
        calls.append(url)
        return f"{H}name: faked\n"

    result = collect(ctx_for(tmp_path), cmdline="kairos.config_url=http://h/x", fetch=fake)
    assert calls == ["http://h/x"]
    assert result.merged == {"config_url": "http://h/x", "name": "faked"}
