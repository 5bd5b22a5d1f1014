"""`kairos-agent --root R run-stage boot` for real, on a minimal Debian root.

The root's own tools then check the result: systemctl says the unit is enabled, perl's
crypt() (the root's libcrypt) accepts the password hash, su switches to the new user and
stat inside the chroot names the owners from the root's account files.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from kairos.run import run
from kairos.stages.crypt import verify

pytestmark = pytest.mark.integration

BOOT = """\
#cloud-config
name: chroot-test
stages:
  boot.before:
    - name: firstboot
      ensure_entities:
        - entity: |
            kind: "group"
            group_name: "admin"
            password: "x"
            gid: 900
      systemd_firstboot:
        locale: C.UTF-8
  boot:
    - name: accounts
      users:
        kairos:
          passwd: kairos
          groups: [sudo, admin]
          shell: /bin/bash
          ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKairosTestKey test@kairos"]
    - name: content
      files:
        - path: /srv/owned.txt
          content: "owned by kairos\\n"
          owner_string: kairos
          permissions: 0640
        - path: /etc/systemd/system/hello.service
          content: |
            [Unit]
            Description=hello
            [Service]
            ExecStart=/bin/true
            [Install]
            WantedBy=multi-user.target
      directories:
        - path: /srv/data
          owner_string: "kairos:sudo"
          permissions: 0770
      systemctl:
        enable: [hello, systemd-networkd]
        mask: [systemd-timesyncd]
      commands:
        - id -u kairos > /root/kairos-uid
        - stat -c %U:%G /srv/owned.txt > /root/owner
  boot.after:
    - name: after
      if: "[ -s /root/kairos-uid ]"
      commands:
        - echo after-ran > /root/after
"""


def _chroot(root: Path, *argv: str) -> str:
    return run(["chroot", str(root), *argv]).stdout.strip()


def _passwd(root: Path, file: str, name: str) -> list[str]:
    for line in (root / "etc" / file).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"{name} missing from {file}")


def test_run_stage_boot_in_real_root(minroot: Path) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()
    oem = minroot / "oem"
    oem.mkdir()
    (oem / "10_boot.yaml").write_text(textwrap.dedent(BOOT))
    result = run(
        [sys.executable, "-m", "kairos", "--root", str(minroot), "run-stage", "boot", "--strict"],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path("/etc/passwd").read_bytes() == host_passwd  # the host is untouched

    # Users: an entry in each account file, a hash the root's own libcrypt accepts.
    row = _passwd(minroot, "passwd", "kairos")
    uid, gid = int(row[2]), int(row[3])
    assert uid >= 1000 and row[5:] == ["/home/kairos", "/bin/bash"]
    hashed = _passwd(minroot, "shadow", "kairos")[1]
    assert hashed.startswith("$6$") and len(hashed.split("$")) == 4
    assert verify("kairos", hashed)
    perl = ["perl", "-e", "print crypt($ARGV[0], $ARGV[1])"]
    assert _chroot(minroot, *perl, "kairos", hashed) == hashed
    assert _chroot(minroot, *perl, "wrong", hashed) != hashed
    assert _passwd(minroot, "group", "admin")[2] == "900"  # ensure_entities in boot.before
    # systemd-firstboot ran: Debian's build writes the locale to /etc/default/locale.
    assert "LANG=C.UTF-8" in _chroot(minroot, "cat", "/etc/default/locale").splitlines()
    groups = _chroot(minroot, "id", "-nG", "kairos").split()
    assert {"kairos", "sudo", "admin"} <= set(groups)
    assert "kairos" in _passwd(minroot, "gshadow", "sudo")[3].split(",")
    assert _chroot(minroot, "su", "-s", "/bin/sh", "kairos", "-c", "id -un") == "kairos"

    # Home and keys owned by the user the root knows (not a host user).
    home = minroot / "home/kairos"
    assert (home.stat().st_uid, home.stat().st_gid) == (uid, gid)
    assert _chroot(minroot, "stat", "-c", "%U:%G", "/home/kairos") == "kairos:kairos"
    keys = home / ".ssh/authorized_keys"
    assert "test@kairos" in keys.read_text() and keys.stat().st_uid == uid

    # Files and directories with owner and mode resolved inside the root.
    owned = minroot / "srv/owned.txt"
    assert owned.read_text() == "owned by kairos\n"
    assert (owned.stat().st_mode & 0o7777, owned.stat().st_uid) == (0o640, uid)
    assert _chroot(minroot, "stat", "-c", "%U:%G %a", "/srv/data") == "kairos:sudo 770"

    # systemd agrees about what we enabled and masked.
    assert _chroot(minroot, "systemctl", "is-enabled", "hello.service") == "enabled"
    assert _chroot(minroot, "systemctl", "is-enabled", "systemd-networkd.service") == "enabled"
    masked = run(
        ["chroot", str(minroot), "systemctl", "is-enabled", "systemd-timesyncd.service"],
        check=False,
    )
    assert masked.stdout.strip() == "masked"

    # Commands ran inside the chroot: they saw the new user and the owner names.
    assert (minroot / "root/kairos-uid").read_text().strip() == str(uid)
    assert (minroot / "root/owner").read_text().strip() == "kairos:kairos"
    assert (minroot / "root/after").read_text().strip() == "after-ran"  # boot.after, `if:` held


def test_run_stage_is_idempotent(minroot: Path) -> None:
    """Boot stages run at every boot: a second run changes nothing it already set."""
    oem = minroot / "oem"
    oem.mkdir()
    (oem / "10_boot.yaml").write_text(textwrap.dedent(BOOT))
    argv = [sys.executable, "-m", "kairos", "--root", str(minroot), "run-stage", "boot", "--strict"]
    assert run(argv, check=False).returncode == 0
    first = {f: (minroot / "etc" / f).read_text() for f in ("passwd", "shadow", "group", "gshadow")}
    keys = (minroot / "home/kairos/.ssh/authorized_keys").read_text()
    assert run(argv, check=False).returncode == 0
    assert {f: (minroot / "etc" / f).read_text() for f in first} == first
    assert (minroot / "home/kairos/.ssh/authorized_keys").read_text() == keys
    assert verify("kairos", _passwd(minroot, "shadow", "kairos")[1])
