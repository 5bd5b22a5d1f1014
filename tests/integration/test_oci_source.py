"""Image sources end to end, with real tools: layers made by GNU tar, gzip and zstd from real
trees, packed as an OCI archive, a docker-save archive and an OCI layout directory, then
materialized; hostile layers refused with nothing written outside the target; a real Debian
root round-tripped through the OCI archive writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from kairos.errors import KairosError
from kairos.image import oci
from kairos.image import source as src
from kairos.image.layers import ApplyOptions, LayerApplier
from kairos.image.oci_write import write_oci_archive
from kairos.log import Progress
from kairos.run import run, which
from tests.unit.test_oci_layers import E, layer_tar
from tests.unit.test_oci_write import snapshot

pytestmark = pytest.mark.integration


def _can_chown() -> bool:
    probe = Path("/tmp") / f".kairos-chown-probe-{os.getpid()}"
    try:
        probe.touch()
        os.chown(probe, 4321, 4321)
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


needs_chown = pytest.mark.skipif(not _can_chown(), reason="setting owners needs CAP_CHOWN")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / digest[7:]).write_bytes(data)
    return digest


MEDIA = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def gnu_tar(tree: Path, out: Path) -> bytes:
    """A layer as docker/buildkit write it: GNU tar of a tree, numeric owners, sorted."""
    run(["tar", "--numeric-owner", "--sort=name", "--xattrs", "-C", tree, "-cf", out, "."])
    return out.read_bytes()


def compress(plain: Path, how: str) -> bytes:
    if how == "gzip":
        run(["gzip", "-n", "-k", "-f", plain])
        return plain.with_suffix(plain.suffix + ".gz").read_bytes()
    if how == "zstd":
        run(["zstd", "-q", "-f", plain, "-o", plain.with_suffix(".zst")])
        return plain.with_suffix(".zst").read_bytes()
    return plain.read_bytes()


def oci_layout(layout: Path, layers: Sequence[tuple[bytes, bytes, str]]) -> None:
    """An OCI layout from (uncompressed, blob, compression) layers."""
    descs = [
        {"mediaType": MEDIA[how], "digest": _put(layout, b), "size": len(b)} for _, b, how in layers
    ]
    config = json.dumps(
        {
            "architecture": oci.host_arch(),
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [_digest(p) for p, _, _ in layers]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": oci.MT_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _put(layout, config),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": oci.MT_OCI_MANIFEST,
                "digest": _put(layout, manifest),
                "size": len(manifest),
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')


def docker_save(archive: Path, work: Path, plains: Sequence[bytes]) -> None:
    """The classic `docker save` layout, packed by GNU tar."""
    tree = work / "docker-save"
    tree.mkdir()
    paths = []
    for i, plain in enumerate(plains):
        layer_id = hashlib.sha256(f"{i}".encode()).hexdigest()
        (tree / layer_id).mkdir()
        (tree / layer_id / "layer.tar").write_bytes(plain)
        (tree / layer_id / "VERSION").write_text("1.0")
        paths.append(f"{layer_id}/layer.tar")
    config = json.dumps(
        {"os": "linux", "rootfs": {"type": "layers", "diff_ids": [_digest(p) for p in plains]}}
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    (tree / config_name).write_bytes(config)
    manifest = [{"Config": config_name, "RepoTags": ["t:1"], "Layers": paths}]
    (tree / "manifest.json").write_text(json.dumps(manifest))
    run(["tar", "-C", tree, "-cf", archive, "."])


def build_layer_trees(base: Path) -> list[Path]:
    """Three layer trees; the later ones delete (whiteout) and replace (opaque) earlier files."""
    l1, l2, l3 = (base / f"l{i}" for i in (1, 2, 3))
    for d in ("etc", "opt/app/conf.d", "usr/bin", "var/lib/gone/deep", "home/user"):
        (l1 / d).mkdir(parents=True)
    (l1 / "etc/os-release").write_text("ID=test\n")
    (l1 / "etc/motd").write_text("old motd\n")
    (l1 / "opt/app/old").write_text("old")
    (l1 / "opt/app/conf.d/a.conf").write_text("a")
    (l1 / "var/lib/gone/deep/file").write_text("x")
    (l1 / "usr/bin/tool").write_text("#!/bin/sh\n")
    (l1 / "usr/bin/tool").chmod(0o4755)
    os.link(l1 / "usr/bin/tool", l1 / "usr/bin/tool-hardlink")
    (l1 / "home/user/.profile").write_text("PS1=x\n")
    os.chown(l1 / "home/user", 1000, 1000)
    os.chown(l1 / "home/user/.profile", 1000, 100)

    for d in ("etc", "opt/app", "var/lib"):
        (l2 / d).mkdir(parents=True)
    (l2 / "etc/.wh.motd").touch()
    (l2 / "opt/app/.wh..wh..opq").touch()
    (l2 / "opt/app/new").write_text("new")
    (l2 / "var/lib/.wh.gone").touch()

    (l3 / "etc").mkdir(parents=True)
    (l3 / "etc/hostname").write_text("kairos\n")
    (l3 / "bin").symlink_to("usr/bin")
    (l3 / "etc/mtab").symlink_to("/proc/self/mounts")
    return [l1, l2, l3]


def check_result(root: Path) -> None:
    found = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert found == [
        "bin",
        "etc",
        "etc/hostname",
        "etc/mtab",
        "etc/os-release",
        "home",
        "home/user",
        "home/user/.profile",
        "opt",
        "opt/app",
        "opt/app/new",
        "usr",
        "usr/bin",
        "usr/bin/tool",
        "usr/bin/tool-hardlink",
        "var",
        "var/lib",
    ]
    tool = (root / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and tool.st_uid == 0
    assert (root / "usr/bin/tool-hardlink").stat().st_ino == tool.st_ino
    assert (root / "home/user").stat().st_uid == 1000
    profile = (root / "home/user/.profile").stat()
    assert (profile.st_uid, profile.st_gid) == (1000, 100)
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.readlink(root / "etc/mtab") == "/proc/self/mounts"
    assert (root / "opt/app/new").read_text() == "new"


@pytest.fixture
def image_inputs(tmp_path: Path) -> tuple[list[tuple[bytes, bytes, str]], Path]:
    if not _can_chown():
        pytest.skip("building owned layer trees needs CAP_CHOWN")
    if which("zstd") is None:
        pytest.skip("zstd is not installed")
    work = tmp_path / "work"
    work.mkdir()
    layers = []
    for i, (tree, how) in enumerate(
        zip(build_layer_trees(work), ("gzip", "zstd", "none"), strict=True)
    ):
        plain_path = work / f"layer{i}.tar"
        plain = gnu_tar(tree, plain_path)
        layers.append((plain, compress(plain_path, how), how))
    return layers, work


def test_oci_dir_source(image_inputs: tuple[list[tuple[bytes, bytes, str]], Path]) -> None:
    layers, work = image_inputs
    oci_layout(work / "layout", layers)
    progress = Progress(quiet=True)
    src.materialize(src.parse(f"oci-dir:{work}/layout"), work / "root", progress)
    check_result(work / "root")
    assert [n for n, _ in progress.steps] == [f"unpack oci-dir:{work}/layout"]


def test_ocifile_source(image_inputs: tuple[list[tuple[bytes, bytes, str]], Path]) -> None:
    layers, work = image_inputs
    oci_layout(work / "layout", layers)
    run(["tar", "-C", work / "layout", "-cf", work / "image.tar", "."])
    src.materialize(src.parse(f"ocifile:{work}/image.tar"), work / "root", Progress(quiet=True))
    check_result(work / "root")


def test_docker_save_source(image_inputs: tuple[list[tuple[bytes, bytes, str]], Path]) -> None:
    layers, work = image_inputs
    docker_save(work / "saved.tar", work, [plain for plain, _, _ in layers])
    src.materialize(src.parse(f"ocifile:{work}/saved.tar"), work / "root", Progress(quiet=True))
    check_result(work / "root")


# --- hostile layers ----------------------------------------------------------------


def hostile_archive(path: Path, layers: Sequence[Sequence[E]]) -> None:
    """An OCI archive (gzip layers) holding the given entry lists, packed by GNU tar."""
    layout = path.with_suffix(".layout")
    built = []
    for entries in layers:
        plain = layer_tar(entries)
        tmp = layout.with_suffix(".plain")
        tmp.write_bytes(plain)
        built.append((plain, compress(tmp, "gzip"), "gzip"))
    oci_layout(layout, built)
    run(["tar", "-C", layout, "-cf", path, "."])


def _tricks(outside: Path) -> dict[str, tuple[list[list[E]], str, str]]:
    """name -> (layers, entry the error must name, layer the error must name)."""
    planted = E("evil", "sym", target=str(outside))
    return {
        "dotdot": (
            [[E("etc/x", data=b"1"), E("../outside/pwned", data=b"x")]],
            "../outside/pwned",
            "1/1",
        ),
        "absolute": ([[E(f"{outside}/pwned", data=b"x")]], f"{outside}/pwned", "1/1"),
        "through-symlink": ([[planted, E("evil/pwned", data=b"x")]], "evil/pwned", "1/1"),
        "through-earlier-layer-symlink": (
            [
                [E("lib", "dir"), E("lib/evil", "sym", target=str(outside))],
                [E("lib/evil/pwned", data=b"x")],
            ],
            "lib/evil/pwned",
            "2/2",
        ),
        "relative-symlink-out": (
            [[E("a/b/up", "sym", target="../../../outside")]],
            "a/b/up",
            "1/1",
        ),
        "hardlink-out": ([[E("steal", "link", target="../outside/victim")]], "steal", "1/1"),
        "hardlink-through-symlink": (
            [[planted], [E("steal", "link", target="evil/victim")]],
            "steal",
            "2/2",
        ),
        "device-node": ([[E("dev/sda", "chr", mode=0o660)]], "dev/sda", "1/1"),
    }


@pytest.mark.parametrize(
    "trick",
    [
        "dotdot",
        "absolute",
        "through-symlink",
        "through-earlier-layer-symlink",
        "relative-symlink-out",
        "hardlink-out",
        "hardlink-through-symlink",
        "device-node",
    ],
)
def test_hostile_layer_is_refused(tmp_path: Path, trick: str) -> None:
    outside = tmp_path / "outside"  # a sentinel directory next to the target
    outside.mkdir()
    layers, entry, layer = _tricks(outside)[trick]
    archive = tmp_path / "hostile.tar"
    hostile_archive(archive, layers)
    target = tmp_path / "target"
    with pytest.raises(KairosError) as info:
        src.materialize(src.parse(f"ocifile:{archive}"), target, Progress(quiet=True))
    text = str(info.value)
    assert f"entry '{entry}' refused" in text and f"layer {layer} (" in text, text
    assert list(outside.iterdir()) == [], "something was written outside the target"
    assert not (tmp_path / "pwned").exists()


# --- a real Debian root ----------------------------------------------------------------


def test_mmdebstrap_tar_as_a_layer_matches_gnu_tar(minroot_tar: Path, minroot: Path) -> None:
    """The applier on a real root's tar (./ names, devices, setuid) gives what tar -x gives."""
    ours = minroot.parent / "ours"
    ours.mkdir()
    with minroot_tar.open("rb") as f:
        LayerApplier(ours, ApplyOptions(allow_devices=True)).apply(f, "mmdebstrap")
    assert snapshot(ours) == snapshot(minroot)


def test_real_root_round_trip_through_oci_archive(minroot: Path, tmp_path: Path) -> None:
    archive = tmp_path / "root.oci.tar"
    t0 = time.monotonic()
    digest = write_oci_archive(minroot, archive, name="kairos-min", version="0.0.1")
    t1 = time.monotonic()
    back = tmp_path / "back"
    src.materialize(src.parse(f"ocifile:{archive}"), back, Progress(quiet=True))
    t2 = time.monotonic()
    devices = (stat.S_IFCHR, stat.S_IFBLK)
    expected = {k: v for k, v in snapshot(minroot).items() if v[0] not in devices}
    assert snapshot(back) == expected  # device nodes are left out of images on purpose
    listing = run(["tar", "-tf", archive]).stdout.split()
    assert f"blobs/sha256/{digest[7:]}" in listing
    size = sum(p.stat().st_size for p in minroot.rglob("*") if p.is_file() and not p.is_symlink())
    print(
        f"\nreal root {size / 1e6:.0f} MB: write {t1 - t0:.1f}s, "
        f"archive {archive.stat().st_size / 1e6:.0f} MB, read+verify+apply {t2 - t1:.1f}s"
    )


def test_tampered_archive_is_refused_before_writing(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/random").write_bytes(os.urandom(64 * 1024))  # the largest blob by far
    archive = tmp_path / "a.tar"
    write_oci_archive(rootfs, archive, name="k", version="1")
    # Flip one byte in the middle of the layer blob (the largest member).
    with tarfile.open(archive) as tar:
        layer = max(tar.getmembers(), key=lambda m: m.size)
        offset = layer.offset_data + layer.size // 2
    data = bytearray(archive.read_bytes())
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    run(["tar", "-tf", archive])  # still a valid tar: only the digest can tell
    target = tmp_path / "target"
    with pytest.raises(KairosError, match="corrupt image"):
        src.materialize(src.parse(f"ocifile:{archive}"), target, Progress(quiet=True))
    assert not target.exists() or not any(target.iterdir())
