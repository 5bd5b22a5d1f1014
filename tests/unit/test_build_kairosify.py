"""Kairosify on a small fake root: files, units, accounts, release, hardlink safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.build import kairosify as k
from kairos.build.families import OsRelease, detect
from kairos.build.families.debian import DebianFamily, installed_packages
from kairos.errors import KairosError
from kairos.image.debian import DEBIAN_PACKAGES

OS_RELEASE = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


def _status(packages: tuple[str, ...]) -> str:
    return "\n\n".join(f"Package: {p}\nStatus: install ok installed\nVersion: 1" for p in packages)


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("etc/ssh", "etc/skel", "boot", "var/lib/dpkg", "var/lib/dbus", "usr/bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/group").write_text("root:x:0:\nsudo:x:27:\n")
    (root / "etc/gshadow").write_text("root:*::\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/skel/.bashrc").write_text("# bashrc\n")
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (root / "boot/vmlinuz-6.1.0-57-amd64").write_bytes(b"kernel")
    (root / "var/lib/dpkg/status").write_text(_status(DEBIAN_PACKAGES))
    return root


def _run(root: Path) -> tuple[str, ...]:
    family, osr = detect(root)
    return tuple(k.kairosify(root, family, osr, k.ReleaseInfo(name="kairos", version="v9.9.9")))


def test_kairosify_lays_out_node_files(fake_root: Path) -> None:
    oem = _run(fake_root)
    r = fake_root
    assert {"00_rootfs.yaml", "05_network.yaml", "08_ssh.yaml", "10_accounting.yaml"} <= set(oem)
    assert (r / "system/oem/10_accounting.yaml").read_text().startswith("#cloud-config")
    agent = r / "usr/bin/kairos-agent"
    assert agent.read_text().startswith("#!/usr/bin/python3") and os.access(agent, os.X_OK)
    assert (r / "usr/lib/python3/dist-packages/kairos/cli.py").exists()
    assert not list((r / "usr/lib/python3/dist-packages/kairos").rglob("__pycache__"))
    mod = r / "usr/lib/dracut/modules.d/28immucore"
    assert os.access(mod / "module-setup.sh", os.X_OK) and (mod / "immucore.service").exists()
    assert (r / "etc/dracut.conf.d/99-kairos.conf").exists()
    for unit in k.COS_UNITS:
        assert (r / "usr/lib/systemd/system" / unit).exists()
    wants = r / "etc/systemd/system/sysinit.target.wants/cos-setup-fs.service"
    assert os.readlink(wants) == "/usr/lib/systemd/system/cos-setup-fs.service"
    assert (r / "etc/systemd/system/timers.target.wants/cos-setup-reconcile.timer").is_symlink()
    for unit in ("e2scrub_reap.service", "dracut-shutdown.service", "apt-daily.timer"):
        assert os.readlink(r / "etc/systemd/system" / unit) == "/dev/null"
    # The serial console's getty waits for its device longer than systemd's 90 s default.
    dropin = r / "etc/systemd/system/dev-ttyS0.device.d/50-kairos-console-timeout.conf"
    assert dropin.read_text() == "[Unit]\nJobRunningTimeoutSec=5min\n"
    assert os.readlink(r / "boot/vmlinuz") == "vmlinuz-6.1.0-57-amd64"


def test_identity_removed_and_accounts_added(fake_root: Path) -> None:
    _run(fake_root)
    r = fake_root
    assert not list((r / "etc/ssh").glob("ssh_host_*"))
    assert (r / "etc/machine-id").read_text() == ""
    assert not (r / "var/lib/dbus/machine-id").is_symlink()
    assert "admin:x:900:kairos" in (r / "etc/group").read_text().splitlines()
    assert "kairos:x:1000:1000:Kairos:/home/kairos:/bin/bash" in (r / "etc/passwd").read_text()
    assert "kairos:!:" in (r / "etc/shadow").read_text()  # locked unless live media
    sudo = r / "etc/sudoers.d/kairos"
    assert sudo.read_text() == "%admin ALL=(ALL) NOPASSWD: ALL\n"
    assert sudo.stat().st_mode & 0o777 == 0o440
    assert (r / "home/kairos/.bashrc").exists()


def test_kairosify_twice_is_idempotent(fake_root: Path) -> None:
    _run(fake_root)
    _run(fake_root)
    assert (fake_root / "etc/group").read_text().count("admin:") == 1
    lines = (fake_root / "etc/passwd").read_text().splitlines()
    assert sum(ln.startswith("kairos:") for ln in lines) == 1


def test_release_file_has_upstream_keys(fake_root: Path) -> None:
    _run(fake_root)
    text = (fake_root / "etc/kairos-release").read_text()
    values = dict(line.split("=", 1) for line in text.splitlines())
    for key in (
        "KAIROS_ID", "KAIROS_ID_LIKE", "KAIROS_NAME", "KAIROS_VERSION", "KAIROS_RELEASE",
        "KAIROS_FLAVOR", "KAIROS_FLAVOR_RELEASE", "KAIROS_FAMILY", "KAIROS_VARIANT",
        "KAIROS_MODEL", "KAIROS_ARCH", "KAIROS_TARGETARCH", "KAIROS_TRUSTED_BOOT",
        "KAIROS_FIPS", "KAIROS_SOFTWARE_VERSION", "KAIROS_SOFTWARE_VERSION_PREFIX",
        "KAIROS_INIT_VERSION", "KAIROS_HOME_URL", "KAIROS_BUG_REPORT_URL",
    ):  # fmt: skip
        assert key in values
    assert values["KAIROS_VERSION"] == '"v9.9.9"'
    assert values["KAIROS_FLAVOR"] == '"debian"' and values["KAIROS_FLAVOR_RELEASE"] == '"12"'
    assert values["KAIROS_FAMILY"] == '"debian"' and values["KAIROS_VARIANT"] == '"core"'


def test_hardlinked_cache_files_are_never_changed(fake_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache-group"
    cache.write_text((fake_root / "etc/group").read_text())
    (fake_root / "etc/group").unlink()
    os.link(cache, fake_root / "etc/group")
    before = cache.read_text()
    _run(fake_root)
    assert cache.read_text() == before
    assert "admin:x:900" in (fake_root / "etc/group").read_text()


def test_missing_packages_are_installed_through_the_family(
    fake_root: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    (fake_root / "var/lib/dpkg/status").write_text(_status(("systemd",)))
    _run(fake_root)
    apt = [c for c in recorded_commands if "apt-get" in c and "install" in c]
    assert len(apt) == 1
    assert "python3-yaml" in apt[0] and "systemd" not in apt[0][apt[0].index("install") :]
    mounts = [c for c in recorded_commands if c[0] == "mount"]
    umounts = [c for c in recorded_commands if c[0] == "umount"]
    assert len(mounts) == 2 * len(umounts)  # rbind + make-rslave each, all released


def test_no_packages_installed_when_complete(
    fake_root: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    _run(fake_root)
    assert recorded_commands == []


def test_dpkg_status_parser_skips_removed() -> None:
    text = (
        "Package: a\nStatus: install ok installed\n\n"
        "Package: b\nStatus: deinstall ok config-files\n"
    )
    assert installed_packages(text) == frozenset({"a"})


def test_unsupported_family_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=gentoo\nPRETTY_NAME="Gentoo"\n')
    with pytest.raises(KairosError, match="unsupported distribution family") as err:
        detect(tmp_path)
    assert err.value.hint and "debian" in err.value.hint


def test_family_from_id_like(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=pop\nID_LIKE="ubuntu debian"\n')
    family, osr = detect(tmp_path)
    assert isinstance(family, DebianFamily) and osr.id_like == ("ubuntu", "debian")


def test_no_os_release_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KairosError, match="os-release"):
        OsRelease.read(tmp_path)


def test_no_kernel_is_an_error(fake_root: Path) -> None:
    (fake_root / "boot/vmlinuz-6.1.0-57-amd64").unlink()
    with pytest.raises(KairosError, match="no kernel"):
        _run(fake_root)
