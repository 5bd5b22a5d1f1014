"""Reading OCI layouts, OCI archives and docker-save archives: parsing, digests, compression."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from kairos.errors import KairosError, ToolMissingError
from kairos.image import oci
from tests.unit.test_oci_layers import E, layer_tar, tree


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _put(layout: Path, data: bytes) -> str:
    digest = _digest(data)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        # Test-side only: the system under test decompresses through the runner.
        return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True).stdout
    return data


_LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}


def write_oci_layout(
    layout: Path,
    layers: Sequence[Sequence[E]],
    compression: Sequence[str] | None = None,
    arch: str = "amd64",
    extra_platforms: Sequence[str] = (),
) -> str:
    """An OCI image layout with one layer per entry list; returns the manifest digest."""
    compression = compression or ["gzip"] * len(layers)
    descs, diff_ids = [], []
    for entries, how in zip(layers, compression, strict=True):
        plain = layer_tar(entries)
        blob = compress(plain, how)
        descs.append(
            {"mediaType": _LAYER_TYPES[how], "digest": _put(layout, blob), "size": len(blob)}
        )
        diff_ids.append(_digest(plain))
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"org.opencontainers.image.version": "1.2.3"}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
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
    mdigest = _put(layout, manifest)
    entries = [
        {
            "mediaType": oci.MT_OCI_MANIFEST,
            "digest": mdigest,
            "size": len(manifest),
            "platform": {"architecture": arch, "os": "linux"},
        }
    ]
    for other in extra_platforms:
        entries.append({**entries[0], "platform": {"architecture": other, "os": "linux"}})
    index = {"schemaVersion": 2, "manifests": entries}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return mdigest


def tar_tree(src: Path, archive: Path) -> None:
    """Pack a directory's content into a tar (as `tar -C src -cf archive .` would)."""
    with tarfile.open(archive, "w") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)


def write_docker_save(archive: Path, layers: Sequence[Sequence[E]]) -> None:
    """The classic `docker save` layout: <id>/layer.tar, <config hex>.json, manifest.json."""
    files: dict[str, bytes] = {}
    diff_ids, paths = [], []
    for i, entries in enumerate(layers):
        plain = layer_tar(entries)
        layer_id = hashlib.sha256(f"layer{i}".encode()).hexdigest()
        files[f"{layer_id}/layer.tar"] = plain
        files[f"{layer_id}/VERSION"] = b"1.0"
        paths.append(f"{layer_id}/layer.tar")
        diff_ids.append(_digest(plain))
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    files[config_name] = config
    files["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": ["test:latest"], "Layers": paths}]
    ).encode()
    files["repositories"] = b'{"test":{"latest":"x"}}'
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


L1 = [E("etc", "dir"), E("etc/os-release", data=b"ID=test\n"), E("opt/x/old", data=b"o")]
L2 = [E("etc/.wh.os-release"), E("etc/hostname", data=b"node\n"), E("opt/x/.wh..wh..opq")]
L3 = [E("opt/x/new", data=b"n"), E("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o755)]
EXPECTED = {
    "etc": "dir",
    "etc/hostname": "node\n",
    "opt": "dir",
    "opt/x": "dir",
    "opt/x/new": "n",
    "usr": "dir",
    "usr/bin": "dir",
    "usr/bin/tool": "#!/bin/sh\n",
}


def test_oci_dir_and_archive_with_mixed_compression(tmp_path: Path, allow_commands: None) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd tool not installed")
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1, L2, L3], ["gzip", "zstd", "none"])
    image = oci.extract(layout, tmp_path / "from-dir")
    assert tree(tmp_path / "from-dir") == EXPECTED
    assert image.format == oci.ImageFormat.OCI and image.labels == {
        "org.opencontainers.image.version": "1.2.3"
    }
    tar_tree(layout, tmp_path / "image.tar")
    oci.extract(tmp_path / "image.tar", tmp_path / "from-tar")
    assert tree(tmp_path / "from-tar") == EXPECTED


def test_docker_save_archive(tmp_path: Path) -> None:
    write_docker_save(tmp_path / "saved.tar", [L1, L2, L3])
    image = oci.extract(tmp_path / "saved.tar", tmp_path / "root")
    assert image.format == oci.ImageFormat.DOCKER
    assert tree(tmp_path / "root") == EXPECTED


def test_docker_save_layer_digest_is_checked_against_diff_ids(tmp_path: Path) -> None:
    write_docker_save(tmp_path / "saved.tar", [L1])
    # Rewrite the archive with one byte of the layer changed (same size, so tar stays valid).
    with (
        tarfile.open(tmp_path / "saved.tar") as src,
        tarfile.open(tmp_path / "bad.tar", "w") as dst,
    ):
        for m in src.getmembers():
            data = src.extractfile(m).read()  # type: ignore[union-attr]
            if m.name.endswith("layer.tar"):
                data = data.replace(b"ID=test", b"ID=evil")
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(oci.ImageError, match="corrupt image"):
        oci.extract(tmp_path / "bad.tar", tmp_path / "root")
    assert not (tmp_path / "root").exists()  # refused before anything was written


def test_diff_id_is_checked_while_applying(tmp_path: Path) -> None:
    """A compressed layer whose uncompressed content is not the config's diff_id."""
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1])
    image = oci.read_image(oci.DirStore(layout))
    cfg_path = layout / image.config.path
    cfg = json.loads(cfg_path.read_text())
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    data = json.dumps(cfg).encode()
    manifest_path = layout / image.manifest.path  # type: ignore[union-attr]
    manifest = json.loads(manifest_path.read_text())
    manifest["config"].update(digest=_put(layout, data), size=len(data))
    mdata = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=_put(layout, mdata), size=len(mdata))
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(oci.ImageError, match="does not match the config's diff_id"):
        oci.extract(layout, tmp_path / "root")


def test_corrupt_blob_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1, L3], ["none", "gzip"])
    image = oci.read_image(oci.DirStore(layout))
    blob = layout / image.layers[0].blob.path
    blob.write_bytes(blob.read_bytes().replace(b"ID=test", b"ID=evil"))
    with pytest.raises(oci.ImageError, match="corrupt image") as info:
        oci.extract(layout, tmp_path / "root")
    assert image.layers[0].blob.path in str(info.value)
    assert not (tmp_path / "root").exists()


def test_manifest_digest_mismatch_is_reported(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    mdigest = write_oci_layout(layout, [L1])
    mpath = layout / "blobs/sha256" / mdigest.split(":")[1]
    mpath.write_bytes(mpath.read_bytes() + b" ")
    with pytest.raises(oci.ImageError, match="does not match its digest"):
        oci.read_image(oci.DirStore(layout))


def test_every_missing_blob_is_listed(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1, L2, L3])
    image = oci.read_image(oci.DirStore(layout))
    for layer in image.layers[:2]:
        (layout / layer.blob.path).unlink()
    with pytest.raises(oci.ImageError) as info:
        oci.read_image(oci.DirStore(layout))
    text = str(info.value)
    assert all(layer.blob.path in text for layer in image.layers[:2])
    assert image.layers[2].blob.path not in text


def test_platform_is_chosen_from_the_index(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1], arch="arm64", extra_platforms=["s390x"])
    assert oci.read_image(oci.DirStore(layout), arch="arm64").architecture == "arm64"
    with pytest.raises(oci.ImageError, match=r"no image for linux/amd64.*linux/arm64"):
        oci.read_image(oci.DirStore(layout), arch="amd64")


def test_not_an_image_archive(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    with tarfile.open(plain, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(oci.ImageError, match=r"neither index\.json nor manifest\.json") as info:
        oci.read_image(oci.open_store(plain))
    assert info.value.hint and "docker save" in info.value.hint
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(oci.ImageError, match="not a readable tar archive"):
        oci.open_store(junk)


def test_unsafe_docker_manifest_paths_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    manifest = json.dumps([{"Config": "../../etc/passwd", "Layers": []}]).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(oci.ImageError, match="unsafe path"):
        oci.read_image(oci.open_store(archive))


def test_malformed_digest_cannot_name_a_path(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1])
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(KairosError, match="malformed digest"):
        oci.read_image(oci.DirStore(layout))


def test_zstd_layers_need_the_zstd_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, [L1], ["none"])
    manifest_path = next(
        p for p in (layout / "blobs/sha256").iterdir() if b"layers" in p.read_bytes()
    )
    # Declare the layer zstd without touching its bytes, then re-point the index at it.
    manifest = json.loads(manifest_path.read_text())
    manifest["layers"][0]["mediaType"] = _LAYER_TYPES["zstd"]
    data = json.dumps(manifest).encode()
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0].update(digest=_put(layout, data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    monkeypatch.setattr("kairos.run.which", lambda tool: None)
    with pytest.raises(ToolMissingError, match="zstd"):
        oci.read_image(oci.DirStore(layout))


def test_gzip_compressed_archive(tmp_path: Path) -> None:
    """`docker save img | gzip > img.tar.gz` is accepted as it is."""
    write_docker_save(tmp_path / "saved.tar", [L1, L2, L3])
    (tmp_path / "saved.tar.gz").write_bytes(gzip.compress((tmp_path / "saved.tar").read_bytes()))
    oci.extract(tmp_path / "saved.tar.gz", tmp_path / "root")
    assert tree(tmp_path / "root") == EXPECTED


def test_docker_save_with_a_linked_duplicate_layer(tmp_path: Path) -> None:
    """docker save stores a repeated layer once and links the second `layer.tar` to it."""
    write_docker_save(tmp_path / "saved.tar", [L1, L1])
    linked = tmp_path / "linked.tar"
    with tarfile.open(tmp_path / "saved.tar") as src, tarfile.open(linked, "w") as dst:
        manifest = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
        first, second = manifest[0]["Layers"]
        for m in src.getmembers():
            if m.name == second:
                link = tarfile.TarInfo(second)
                link.type, link.linkname = tarfile.SYMTYPE, f"../{first}"
                dst.addfile(link)
            else:
                dst.addfile(m, src.extractfile(m))
    oci.extract(linked, tmp_path / "root")
    assert tree(tmp_path / "root")["etc/os-release"] == "ID=test\n"
