"""A real build from debian:bookworm (bootstrapped once, cached) checked with real tools:
xorriso for the ISO, sfdisk/mtools for the raw disk, qemu-img, unsquashfs, the image's
own python3 for the installed agent, and `kairos-agent validate` for /system/oem."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos.build.chroot import remove_tree
from kairos.build.initrd import dracut_image
from kairos.build.kairosify import kernel_version
from kairos.build.manifest import ArtifactKind, Manifest, sha256_file
from kairos.build.pipeline import BuildRequest, Format, build
from kairos.log import Progress
from kairos.run import run, which

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOLS = ("mmdebstrap", "mksquashfs", "unsquashfs", "grub-mkrescue", "xorriso", "sfdisk",
         "mkfs.vfat", "mcopy", "mdir", "qemu-img", "chroot")  # fmt: skip
CONFIG = """#cloud-config
hostname: kairos-test
users:
  - name: tester
    passwd: tester
"""


def _capable() -> str | None:
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if os.geteuid() != 0 and not os.access("/var/cache/kairos-py", os.W_OK):
        return "cannot write /var/cache/kairos-py"
    return None


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Manifest, Path, Path]]:
    why = _capable()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("out")
    cfg = out.parent / "config.yaml"
    cfg.write_text(CONFIG)
    request = BuildRequest(
        source="debian:bookworm",
        output=out,
        formats=(Format.ISO, Format.RAW, Format.QCOW2, Format.NETBOOT),
        cloud_config=cfg,
        name="ktest",
        version="v1.2.3",
        keep_work=True,
    )
    progress = Progress(quiet=True)
    manifest = build(request, progress)
    work = next(Path("/var/cache/kairos-py").glob(f"work-ktest-{os.getpid()}"))
    yield manifest, out, work
    remove_tree(work)


def test_manifest_lists_every_artifact_with_digest(built: tuple[Manifest, Path, Path]) -> None:
    manifest, out, _ = built
    kinds = {a.kind for a in manifest.artifacts}
    assert kinds == {
        ArtifactKind.ISO, ArtifactKind.RAW, ArtifactKind.QCOW2, ArtifactKind.NETBOOT_KERNEL,
        ArtifactKind.NETBOOT_INITRD, ArtifactKind.NETBOOT_SQUASHFS, ArtifactKind.NETBOOT_IPXE,
    }  # fmt: skip
    for art in manifest.artifacts:
        assert (out / art.file).stat().st_size == art.size
    iso = manifest.artifact(ArtifactKind.ISO)
    assert iso.file == "ktest.iso" and sha256_file(out / iso.file) == iso.sha256
    data = json.loads((out / "manifest.json").read_text())
    assert data["name"] == "ktest" and data["version"] == "v1.2.3"
    names = [s["name"] for s in data["steps"]]
    assert any(n.startswith("squashfs") for n in names) and any(n.startswith("iso") for n in names)


def test_iso_is_hybrid_bios_uefi_with_live_layout(built: tuple[Manifest, Path, Path]) -> None:
    _, out, _ = built
    iso = out / "ktest.iso"
    res = run(["xorriso", "-indev", str(iso), "-report_el_torito", "plain"])
    report = res.stdout + res.stderr  # xorriso prints the volume id on stderr
    assert "Volume id    : 'COS_LIVE'" in report
    assert "BIOS" in report and "UEFI" in report
    listing = run(["xorriso", "-indev", str(iso), "-find", "/", "-maxdepth", "2"]).stdout
    for path in ("'/boot/kernel'", "'/boot/initrd'", "'/rootfs.squashfs'", "'/config.yaml'"):
        assert path in listing
    cfg = run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract",
               "/boot/grub/grub.cfg", str(out.parent / "grub.cfg")])  # fmt: skip
    assert cfg.returncode == 0
    text = (out.parent / "grub.cfg").read_text()
    assert 'menuentry "Kairos"' in text and "rd.cos.disable" in text


def test_raw_disk_layout_and_boot_code(built: tuple[Manifest, Path, Path]) -> None:
    _, out, _ = built
    disk = out / "ktest.raw"
    table = json.loads(run(["sfdisk", "-J", str(disk)]).stdout)["partitiontable"]
    assert table["label"] == "gpt"
    parts = table["partitions"]
    assert [p.get("name") for p in parts] == ["bios", "efi", "COS_LIVE"]
    assert parts[0]["type"] == "21686148-6449-6E6F-744E-656564454649"
    assert parts[1]["type"] == "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
    with open(disk, "rb") as fh:
        mbr = fh.read(512)
        fh.seek(parts[2]["start"] * 512)
        magic = fh.read(4)
    assert mbr[510:] == b"\x55\xaa" and mbr[:2] != b"\0\0"  # GRUB's boot.img is in place
    assert magic == b"hsqs"  # the live partition is the squashfs itself
    esp = f"{disk}@@{parts[1]['start'] * 512}"
    listing = run(["mdir", "-i", esp, "-/", "-b", "::/"]).stdout
    for name in ("::/EFI/BOOT/BOOTX64.EFI", "::/boot/kernel", "::/boot/initrd"):
        assert name in listing
    label = run(["mlabel", "-i", esp, "-s", "::"]).stdout
    assert "COS_GRUB" in label


def test_qcow2_matches_raw(built: tuple[Manifest, Path, Path]) -> None:
    _, out, _ = built
    info = json.loads(run(["qemu-img", "info", "--output=json", str(out / "ktest.qcow2")]).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == (out / "ktest.raw").stat().st_size
    cmp = run(["qemu-img", "compare", "-q", str(out / "ktest.raw"), str(out / "ktest.qcow2")])
    assert cmp.returncode == 0


def test_netboot_files(built: tuple[Manifest, Path, Path]) -> None:
    _, out, _ = built
    script = (out / "ktest.ipxe").read_text()
    assert "root=live:http://10.0.2.2:8000/ktest.squashfs" in script
    assert (out / "ktest-initrd").read_bytes() == (out / "ktest-initrd").read_bytes()
    assert (out / "ktest.squashfs").stat().st_size > 100_000_000


def test_squashfs_holds_a_kairos_node(built: tuple[Manifest, Path, Path]) -> None:
    _, out, _ = built
    listing = run(["unsquashfs", "-ll", "-d", "", str(out / "ktest.squashfs")]).stdout
    for path in (
        "/usr/bin/kairos-agent",
        "/usr/lib/python3/dist-packages/kairos/cli.py",
        "/usr/lib/dracut/modules.d/28immucore/module-setup.sh",
        "/system/oem/10_accounting.yaml",
        "/etc/kairos-release",
        "/boot/initrd",
        "/boot/vmlinuz ->",
        "/etc/systemd/system/dracut-shutdown.service -> /dev/null",
        "/etc/systemd/system/sysinit.target.wants/cos-setup-fs.service",
    ):
        assert path in listing, path
    assert "ssh_host_" not in listing
    names = [line.split(" -> ")[0].split()[-1] for line in listing.splitlines() if line.strip()]
    assert "/proc" in names  # the mount point stays, its contents never get in
    assert not [n for n in names if n.startswith(("/proc/", "/sys/", "/dev/"))]


def test_agent_runs_on_the_image_python(built: tuple[Manifest, Path, Path]) -> None:
    _, _, work = built
    root = work / "rootfs"
    version = run(["chroot", str(root), "/usr/bin/kairos-agent", "--version"]).stdout
    assert version.startswith("kairos-py ")
    probe = run(["chroot", str(root), "python3", "-c",
                 "import kairos.immucore.bootstate, yaml; print('ok')"])  # fmt: skip
    assert probe.stdout.strip() == "ok"
    assert "admin:x:900:" in (root / "etc/group").read_text()
    assert (root / "etc/machine-id").read_text() == ""


def test_system_oem_configs_validate(built: tuple[Manifest, Path, Path]) -> None:
    _, _, work = built
    files = sorted((work / "rootfs/system/oem").glob("*.yaml"))
    assert files
    res = run([str(REPO / ".venv/bin/kairos-agent"), "validate", *map(str, files)], check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_initrd_has_immucore_python_and_appended_kairos(
    built: tuple[Manifest, Path, Path],
) -> None:
    _, out, work = built
    root = work / "rootfs"
    kver = kernel_version(root)
    base = dracut_image(root, kver)  # cached: no dracut run here
    initrd = (out / "ktest-initrd").read_bytes()
    size = base.stat().st_size
    assert initrd[:size] == base.read_bytes()
    tail = initrd[size:].lstrip(b"\0")
    extra = gzip.decompress(tail)
    assert b"usr/lib/python3/dist-packages/kairos/immucore/__main__.py" in extra
    assert b"usr/lib/python3/dist-packages/yaml/__init__.py" in extra
    if which("lsinitrd"):
        listing = run(["lsinitrd", str(base)]).stdout
        assert "immucore.service" in listing and "usr/bin/python3" in listing
