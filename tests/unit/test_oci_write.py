"""The OCI archive writer: layout, determinism, round trip through our reader and `tar`."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from kairos.errors import KairosError
from kairos.image import oci
from kairos.image.oci_write import write_oci_archive
from kairos.run import run


def make_rootfs(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=kairos\n")
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "usr/bin/tool").chmod(0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "bin").symlink_to("usr/bin")
    (root / "etc/mtab").symlink_to("/proc/self/mounts")
    (root / "root").mkdir(mode=0o700)
    (root / "root").chmod(0o700)
    (root / "empty").mkdir()
    os.mkfifo(root / "empty/fifo")
    if os.geteuid() == 0:
        (root / "home/user").mkdir(parents=True)
        (root / "home/user/notes").write_text("mine")
        os.chown(root / "home/user", 1000, 1000)
        os.chown(root / "home/user/notes", 1000, 100)
    return root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything the round trip must keep: type, mode, owner, content/target, links."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        kind = stat.S_IFMT(st.st_mode)
        extra: object = None
        if stat.S_ISLNK(st.st_mode):
            extra = os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            extra = p.read_bytes()
            extra = (extra, inodes.setdefault(st.st_ino, rel))
        out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
    return out


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def test_round_trip_through_our_reader(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    archive = tmp_path / "out" / "kairos.oci.tar"
    digest = write_oci_archive(rootfs, archive, name="kairos-debian", version="v1.0.0")
    image = oci.extract(archive, tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(rootfs)
    assert image.manifest is not None and image.manifest.digest == digest
    assert image.architecture == "amd64" and image.os == "linux"
    assert image.labels == {
        "org.opencontainers.image.title": "kairos-debian",
        "org.opencontainers.image.version": "v1.0.0",
    }


def test_layout_is_valid_oci(tmp_path: Path) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    archive = tmp_path / "kairos.tar"
    digest = write_oci_archive(rootfs, archive, name="k", version="2", arch="arm64")
    files = _members(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["platform"] == {"architecture": "arm64", "os": "linux"}
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "2"
    manifest = json.loads(files["blobs/sha256/" + digest.split(":")[1]])
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    config = json.loads(files["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    plain = gzip.decompress(files["blobs/sha256/" + layer["digest"].split(":")[1]])
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    assert config["architecture"] == "arm64"
    docker = json.loads(files["manifest.json"])
    assert docker[0]["RepoTags"] == ["k:2"]


def test_same_tree_gives_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = write_oci_archive(rootfs, tmp_path / "a.tar", name="k", version="1")
    # Touch every file: with SOURCE_DATE_EPOCH set the times are clamped, so no change.
    for p in rootfs.rglob("*"):
        if not p.is_symlink():
            os.utime(p)
    b = write_oci_archive(rootfs, tmp_path / "b.tar", name="k", version="1")
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["blobs", "blobs/sha256"]
    assert names[-3:] == ["index.json", "manifest.json", "oci-layout"]


def test_layer_entries_are_sorted_and_clamped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000")
    archive = tmp_path / "a.tar"
    write_oci_archive(rootfs, archive, name="k", version="1")
    files = _members(archive)
    mdigest = json.loads(files["index.json"])["manifests"][0]["digest"]
    manifest = json.loads(files["blobs/sha256/" + mdigest[7:]])
    layer = gzip.decompress(files["blobs/sha256/" + manifest["layers"][0]["digest"][7:]])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert all(m.mtime <= 1000 for m in members)
    alias = next(m for m in members if m.name.startswith("usr/bin/tool"))
    assert alias.name == "usr/bin/tool" and alias.isreg()
    assert next(m for m in members if m.name == "usr/bin/tool-alias").islnk()


def test_tar_reads_the_archive(tmp_path: Path, allow_commands: None) -> None:
    rootfs = make_rootfs(tmp_path / "rootfs")
    archive = tmp_path / "a.tar"
    write_oci_archive(rootfs, archive, name="k", version="1")
    listing = run(["tar", "-tf", archive]).stdout.split()
    assert {"oci-layout", "index.json", "manifest.json"} <= set(listing)
    out = tmp_path / "untar"
    out.mkdir()
    run(["tar", "-xf", archive, "-C", out])
    layer_name = json.loads((out / "manifest.json").read_text())[0]["Layers"][0]
    unpacked = tmp_path / "layer"
    unpacked.mkdir()
    run(["tar", "-xzf", out / layer_name, "-C", unpacked])
    assert (unpacked / "etc/os-release").read_text() == "ID=kairos\n"
    assert os.readlink(unpacked / "bin") == "usr/bin"


def test_missing_rootfs_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KairosError, match="not a directory"):
        write_oci_archive(tmp_path / "nope", tmp_path / "a.tar", name="k", version="1")


def test_big_layer_is_multi_member_gzip_read_by_gzip_and_tar(
    tmp_path: Path, allow_commands: None
) -> None:
    """Chunks are compressed in parallel as gzip members; every reader takes them."""
    rootfs = make_rootfs(tmp_path / "rootfs")
    (rootfs / "big").write_bytes(os.urandom(9 << 20))
    archive = tmp_path / "a.tar"
    digest = write_oci_archive(rootfs, archive, name="k", version="1")
    assert write_oci_archive(rootfs, tmp_path / "b.tar", name="k", version="1") == digest
    files = _members(archive)
    manifest = json.loads(files["blobs/sha256/" + digest[7:]])
    name = "blobs/sha256/" + manifest["layers"][0]["digest"][7:]
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(files[name])
    assert layer.read_bytes().count(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") >= 3  # members
    run(["gzip", "-t", layer])
    assert "big" in run(["tar", "-tzf", layer]).stdout.split()
    oci.extract(archive, tmp_path / "back")
    assert snapshot(tmp_path / "back") == snapshot(rootfs)
