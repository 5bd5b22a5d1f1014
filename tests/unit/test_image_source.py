"""Image source parsing, pre-flight checks and materialization."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from kairos.image import source as src
from kairos.image.oci_write import write_oci_archive
from kairos.log import Progress
from tests.unit.test_oci_layers import tree
from tests.unit.test_oci_write import make_rootfs, snapshot


@pytest.mark.parametrize(
    ("spec", "cls", "value"),
    [
        ("dir:/srv/rootfs", src.DirSource, Path("/srv/rootfs")),
        ("ocifile:image.tar", src.OciFileSource, Path("image.tar")),
        ("oci-dir:./layout", src.OciDirSource, Path("layout")),
    ],
)
def test_parse_path_schemes(spec: str, cls: type[src.Source], value: Path) -> None:
    parsed = src.parse(spec)
    assert type(parsed) is cls
    assert parsed.path == value  # type: ignore[attr-defined]
    assert parsed.spec == spec and parsed.kind == spec.split(":")[0]


def test_parse_debian() -> None:
    parsed = src.parse("debian:bookworm")
    assert parsed == src.DebianSource(spec="debian:bookworm", suite="bookworm")
    assert parsed.kind == src.SourceKind.DEBIAN
    with pytest.raises(src.SourceError, match="not a Debian suite name"):
        src.parse("debian:Book worm")


@pytest.mark.parametrize(
    ("spec", "registry", "repository", "tag", "digest"),
    [
        ("oci:alpine", "docker.io", "library/alpine", "latest", None),
        ("docker:ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", None),
        ("oci:quay.io/kairos/debian:v3.4.0", "quay.io", "kairos/debian", "v3.4.0", None),
        ("oci:localhost:5000/my/img", "localhost:5000", "my/img", "latest", None),
        ("docker://ghcr.io/org/img:1", "ghcr.io", "org/img", "1", None),
        (
            "oci:quay.io/k/os@sha256:" + "a" * 64,
            "quay.io",
            "k/os",
            None,
            "sha256:" + "a" * 64,
        ),
        (
            "oci:registry.example.com:8443/a/b/c:tag@sha256:" + "b" * 64,
            "registry.example.com:8443",
            "a/b/c",
            "tag",
            "sha256:" + "b" * 64,
        ),
    ],
)
def test_parse_registry_references(
    spec: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    parsed = src.parse(spec)
    assert isinstance(parsed, src.RegistrySource)
    assert parsed.transport == spec.split(":")[0]
    assert (parsed.registry, parsed.repository, parsed.tag, parsed.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    "spec", ["oci:UPPER/case", "oci:img@sha256:short", "oci:img:bad!tag", "oci:a//b"]
)
def test_bad_registry_references(spec: str) -> None:
    with pytest.raises(src.SourceError) as info:
        src.parse(spec)
    assert info.value.hint and "oci:quay.io" in info.value.hint


@pytest.mark.parametrize("spec", ["ftp:x", "nocolon", "dir:", "", "http://x/y"])
def test_unknown_or_empty_scheme(spec: str) -> None:
    with pytest.raises(src.SourceError) as info:
        src.parse(spec)
    assert info.value.message.endswith(".")
    assert info.value.hint and "ocifile:" in info.value.hint


def test_registry_is_reported_unreachable_with_a_hint() -> None:
    ref = src.parse("oci:quay.io/kairos/debian:v3")
    with pytest.raises(src.SourceError, match=r"registry quay\.io not reachable") as info:
        src.check(ref)
    assert info.value.hint and "ocifile:" in info.value.hint and "skopeo copy" in info.value.hint


def test_check_missing_paths(tmp_path: Path) -> None:
    for spec, what in [
        (f"dir:{tmp_path}/none", "root filesystem directory does not exist"),
        (f"ocifile:{tmp_path}/none.tar", "image archive does not exist"),
        (f"oci-dir:{tmp_path}/none", "OCI layout directory does not exist"),
        (
            f"ocifile:{tmp_path}",
            "image archive is not a file (for a layout directory use oci-dir:)",
        ),
    ]:
        with pytest.raises(src.SourceError) as info:
            src.check(src.parse(spec))
        assert str(info.value).startswith(f"source '{spec}': ") and what in str(info.value)
        assert info.value.hint and ":" in info.value.hint


def test_check_dir_that_is_not_a_rootfs(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(src.SourceError, match="does not look like a root filesystem"):
        src.check(src.parse(f"dir:{tmp_path}/random"))
    make_rootfs(tmp_path / "good")
    src.check(src.parse(f"dir:{tmp_path}/good"))


def test_check_non_oci_archive(tmp_path: Path) -> None:
    archive = tmp_path / "plain.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(tarfile.TarInfo("readme"), io.BytesIO(b""))
    with pytest.raises(src.SourceError, match=r"neither index\.json nor manifest\.json") as info:
        src.check(src.parse(f"ocifile:{archive}"))
    assert info.value.hint and "docker save" in info.value.hint
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(src.SourceError, match="not a readable tar archive"):
        src.check(src.parse(f"ocifile:{junk}"))


def test_check_reports_all_problems_of_a_layout_at_once(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    with pytest.raises(src.SourceError) as info:
        src.check(src.parse(f"oci-dir:{layout}"))
    text = str(info.value)
    assert "oci-layout is missing" in text and "lists no manifests" in text


def test_materialize_ocifile(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    archive = tmp_path / "img.tar"
    write_oci_archive(rootfs, archive, name="k", version="1")
    progress = Progress(quiet=True)
    src.materialize(src.parse(f"ocifile:{archive}"), tmp_path / "out", progress)
    assert snapshot(tmp_path / "out") == snapshot(rootfs)
    assert [name for name, _ in progress.steps] == [f"unpack ocifile:{archive}"]


def test_materialize_dir_copies_with_cp(tmp_path: Path, allow_commands: None) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    src.materialize(src.parse(f"dir:{rootfs}"), tmp_path / "copy", Progress(quiet=True))
    assert snapshot(tmp_path / "copy") == snapshot(rootfs)


def test_materialize_dir_argv(tmp_path: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    src.materialize(src.parse(f"dir:{rootfs}"), tmp_path / "copy", Progress(quiet=True))
    assert recorded_commands == [
        ("cp", "-a", "--reflink=auto", "--", f"{rootfs.resolve()}/.", str(tmp_path / "copy"))
    ]


def test_materialize_refuses_copy_into_itself(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    with pytest.raises(src.SourceError, match="inside the source tree"):
        src.materialize(src.parse(f"dir:{rootfs}"), rootfs / "sub", Progress(quiet=True))


def test_materialize_refuses_non_empty_target_before_any_work(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    archive = tmp_path / "img.tar"
    write_oci_archive(rootfs, archive, name="k", version="1")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "precious").write_text("keep")
    with pytest.raises(src.SourceError, match="not an empty directory"):
        src.materialize(src.parse(f"ocifile:{archive}"), dest, Progress(quiet=True))
    assert tree(dest) == {"precious": "keep"}


def test_materialize_checks_first(tmp_path: Path) -> None:
    with pytest.raises(src.SourceError, match="not reachable"):
        src.materialize(src.parse("oci:alpine"), tmp_path / "out", Progress(quiet=True))
    assert not (tmp_path / "out").exists()


def test_materialize_debian_delegates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Path]] = []
    monkeypatch.setattr(
        "kairos.image.debian.materialize_debian",
        lambda suite, dest, progress: calls.append((suite, dest)),
    )
    src.materialize(src.parse("debian:bookworm"), tmp_path / "out", Progress(quiet=True))
    assert calls == [("bookworm", tmp_path / "out")]


def test_in_place_root(tmp_path: Path) -> None:
    assert src.in_place_root(src.parse(f"dir:{tmp_path}")) == tmp_path
    assert src.in_place_root(src.parse("oci:alpine")) is None
