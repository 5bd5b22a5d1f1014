"""Every step type applied under --root to a throwaway root, its effect asserted on disk."""

from __future__ import annotations

import base64
import gzip
import os
import stat
from pathlib import Path

import pytest

from kairos.stages.crypt import verify
from tests.unit.stages_helpers import make_root, run_stage, write_config


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


# Drepper's published vector for "Hello world!".
HELLO_HASH = (
    "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBn"
    "IFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _row(root: Path, file: str, name: str) -> list[str]:
    for line in (root / "etc" / file).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"{name} not in /etc/{file}")


def test_files_with_encodings_owner_and_mode(root: Path) -> None:
    payload = "hello gz\n"
    gz_b64 = base64.b64encode(gzip.compress(payload.encode())).decode()
    write_config(
        root,
        "files.yaml",
        f"""
        stages:
          boot:
            - files:
                - path: /etc/plain.conf
                  content: "plain\\n"
                  permissions: 0600
                  owner: 4242
                  group: 4343
                - path: /etc/b64.conf
                  content: {base64.b64encode(b"from b64").decode()}
                  encoding: b64
                - path: /deep/new/dir/gz.conf
                  content: {gz_b64}
                  encoding: gzip+base64
                  owner_string: app
                - path: /etc/named.conf
                  content: x
                  owner_string: "app:sudo"
                  permissions: "0640"
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    plain = root / "etc/plain.conf"
    assert plain.read_text() == "plain\n"
    assert _mode(plain) == 0o600
    assert (plain.stat().st_uid, plain.stat().st_gid) == (4242, 4343)
    assert (root / "etc/b64.conf").read_bytes() == b"from b64"
    assert _mode(root / "etc/b64.conf") == 0o644  # default, not yip's 0000
    gz = root / "deep/new/dir/gz.conf"
    assert gz.read_text() == payload
    # owner_string resolved through the root's /etc/passwd (app = 4242, primary gid 4343)
    assert (gz.stat().st_uid, gz.stat().st_gid) == (4242, 4343)
    named = root / "etc/named.conf"
    assert (named.stat().st_uid, named.stat().st_gid) == (4242, 27)
    assert _mode(named) == 0o640


def test_files_unknown_owner_is_an_error_not_a_host_lookup(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "daemon" exists on every host; in this root we delete it to prove host files are unused.
    passwd = root / "etc/passwd"
    passwd.write_text(
        "".join(ln + "\n" for ln in passwd.read_text().splitlines() if "daemon" not in ln)
    )
    write_config(
        root,
        "f.yaml",
        """
        stages:
          boot:
            - files:
                - path: /etc/x
                  content: x
                  owner_string: daemon
        """,
    )
    assert run_stage(root, "boot") == 0  # non-strict: reported, run goes on
    err = capsys.readouterr().err
    assert "user 'daemon' does not exist" in err
    assert run_stage(root, "boot", "--strict") == 1


def test_bad_encoding_reports(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        root,
        "f.yaml",
        """
        stages:
          boot:
            - files:
                - path: /etc/x
                  content: "%%%"
                  encoding: rot13
        """,
    )
    assert run_stage(root, "boot", "--strict") == 1
    assert "unknown encoding 'rot13'" in capsys.readouterr().err


def test_directories(root: Path) -> None:
    write_config(
        root,
        "d.yaml",
        """
        stages:
          boot:
            - directories:
                - path: /srv/data/sub
                  permissions: 0750
                  owner: 4242
                  group: 4343
                - path: /srv/plain
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    d = root / "srv/data/sub"
    assert d.is_dir() and _mode(d) == 0o750
    assert (d.stat().st_uid, d.stat().st_gid) == (4242, 4343)
    assert _mode(root / "srv/plain") == 0o755


def test_dns_replaces_resolved_symlink_inside_root(root: Path, tmp_path: Path) -> None:
    # An absolute symlink must resolve inside the root, never onto the host's file.
    (root / "run/systemd/resolve").mkdir(parents=True)
    (root / "run/systemd/resolve/stub-resolv.conf").write_text("nameserver 127.0.0.53\n")
    os.symlink("/run/systemd/resolve/stub-resolv.conf", root / "etc/resolv.conf")
    host = Path("/etc/resolv.conf")
    host_before = host.read_bytes() if host.exists() else b""
    write_config(
        root,
        "dns.yaml",
        """
        stages:
          boot:
            - dns:
                nameservers: [1.1.1.1, 9.9.9.9]
                search: [example.org]
                options: [ndots:2]
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    resolv = root / "etc/resolv.conf"
    assert not resolv.is_symlink()
    assert resolv.read_text() == (
        "nameserver 1.1.1.1\nnameserver 9.9.9.9\nsearch example.org\noptions ndots:2\n"
    )
    host_after = host.read_bytes() if host.exists() else b""
    assert host_after == host_before


def test_downloads_file_url(root: Path, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(b"\x00\x01binary")
    write_config(
        root,
        "dl.yaml",
        f"""
        stages:
          boot:
            - downloads:
                - url: file://{src}
                  path: /opt/payload
                  permissions: 0700
                  owner: 4242
                - url: file://{src}
                  path: /opt/dir/
                - url: quay.io/kairos/some-image:latest
                  path: /opt/img
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "opt/payload").read_bytes() == b"\x00\x01binary"
    assert _mode(root / "opt/payload") == 0o700
    assert (root / "opt/payload").stat().st_uid == 4242
    assert (root / "opt/dir/payload.bin").exists()
    assert not (root / "opt/img").exists()  # registries: warned, not supported yet


def test_commands_run_chrooted(root: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    write_config(
        root,
        "c.yaml",
        """
        stages:
          boot:
            - commands:
                - echo one > /tmp/one
                - touch /two
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert recorded_commands == [
        ("chroot", str(root), "/bin/sh", "-c", "echo one > /tmp/one"),
        ("chroot", str(root), "/bin/sh", "-c", "touch /two"),
    ]


def test_hostname(root: Path) -> None:
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\toldname\n::1 localhost\n")
    write_config(root, "h.yaml", "stages:\n  initramfs:\n    - hostname: node-7\n")
    assert run_stage(root, "initramfs", "--strict") == 0
    assert (root / "etc/hostname").read_text() == "node-7\n"
    assert (root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost node-7\n::1 localhost\n"
    (root / "etc/hosts").unlink()
    assert run_stage(root, "initramfs", "--strict") == 0
    assert (root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost node-7\n"


def test_sysctl_persisted_and_merged(root: Path) -> None:
    write_config(
        root,
        "s.yaml",
        """
        stages:
          boot:
            - sysctl:
                vm.max_map_count: 262144
                net.core.rmem_max: "7500000"
            - sysctl:
                vm.max_map_count: 1000
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "etc/sysctl.d/99-kairos.conf").read_text() == (
        "vm.max_map_count = 1000\nnet.core.rmem_max = 7500000\n"
    )
    assert not (root / "proc").exists()  # /proc is only written on the live system


def test_users_hash_groups_home_and_keys(root: Path) -> None:
    write_config(
        root,
        "u.yaml",
        f"""
        stages:
          boot:
            - users:
                kairos:
                  passwd: kairos
                  groups: [sudo, admin]
                  shell: /bin/bash
                  ssh_authorized_keys: ["ssh-ed25519 AAAAkey1 me@host"]
                hashed:
                  passwd: "{HELLO_HASH}"
                  uid: 2001
                  primary_group: appgrp
                  homedir: /var/lib/hashed
                locked:
                  passwd: secret
                  lock_passwd: true
                  no_create_home: true
                svc:
                  system: true
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    k = _row(root, "passwd", "kairos")
    assert k[2] == "1000" and k[5] == "/home/kairos" and k[6] == "/bin/bash"
    assert _row(root, "group", "kairos")[2] == k[3] == "1000"
    shadow = _row(root, "shadow", "kairos")
    assert shadow[1].startswith("$6$") and verify("kairos", shadow[1])
    assert "kairos" in _row(root, "group", "sudo")[3].split(",")
    assert "kairos" in _row(root, "group", "admin")[3].split(",")  # created on demand
    assert "kairos" in _row(root, "gshadow", "sudo")[3].split(",")
    home = root / "home/kairos"
    assert (home.stat().st_uid, home.stat().st_gid) == (1000, 1000)
    keys = home / ".ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAkey1 me@host\n"
    assert _mode(keys) == 0o600 and _mode(home / ".ssh") == 0o700
    assert keys.stat().st_uid == 1000

    h = _row(root, "passwd", "hashed")
    assert h[2:4] == ["2001", "4343"] and h[5] == "/var/lib/hashed"
    assert verify("Hello world!", _row(root, "shadow", "hashed")[1])
    assert (root / "var/lib/hashed").stat().st_uid == 2001

    locked = _row(root, "shadow", "locked")[1]
    assert locked.startswith("!$6$") and verify("secret", locked[1:])
    assert not (root / "home/locked").exists()
    assert int(_row(root, "passwd", "svc")[2]) < 1000
    # untouched lines stay as they were
    assert (
        (root / "etc/passwd")
        .read_text()
        .startswith("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1")
    )
    assert _mode(root / "etc/shadow") == 0o640


def test_users_update_existing_keeps_uid(root: Path) -> None:
    write_config(
        root, "u.yaml", "stages:\n  boot:\n    - users:\n        app:\n          passwd: new\n"
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert _row(root, "passwd", "app")[2:4] == ["4242", "4343"]
    assert verify("new", _row(root, "shadow", "app")[1])
    assert (
        sum(1 for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith("app:"))
        == 1
    )


def test_users_rerun_keeps_matching_hash(root: Path) -> None:
    write_config(root, "u.yaml", "stages:\n  boot:\n    - users:\n        bob: {passwd: pw}\n")
    assert run_stage(root, "boot", "--strict") == 0
    first = (root / "etc/shadow").read_text()
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "etc/shadow").read_text() == first
    write_config(root, "u.yaml", "stages:\n  boot:\n    - users:\n        bob: {passwd: other}\n")
    assert run_stage(root, "boot", "--strict") == 0
    assert verify("other", _row(root, "shadow", "bob")[1])


def test_authorized_keys_appends_without_duplicates(root: Path) -> None:
    write_config(
        root,
        "k.yaml",
        """
        stages:
          network:
            - authorized_keys:
                app: ["ssh-rsa AAAA1", "ssh-rsa AAAA2"]
            - authorized_keys:
                app: ["ssh-rsa AAAA2", "ssh-rsa AAAA3"]
        """,
    )
    assert run_stage(root, "network", "--strict") == 0
    keys = root / "srv/app/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-rsa AAAA1\nssh-rsa AAAA2\nssh-rsa AAAA3\n"
    assert keys.stat().st_uid == 4242


def test_modules(root: Path) -> None:
    write_config(root, "m.yaml", "stages:\n  rootfs:\n    - modules: [zfs, br_netfilter]\n")
    assert run_stage(root, "rootfs", "--strict") == 0
    assert (root / "etc/modules-load.d/kairos.conf").read_text() == "zfs\nbr_netfilter\n"


def test_timesyncd(root: Path) -> None:
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/timesyncd.conf").write_text("[Time]\n#NTP=\n")
    dropin = root / "etc/systemd/timesyncd.conf.d/10-yip.conf"
    dropin.parent.mkdir()
    dropin.write_text("[Time]\nNTP=old.example\nRootDistanceMaxSec=5\n")
    write_config(
        root,
        "t.yaml",
        """
        stages:
          boot:
            - timesyncd:
                NTP: 0.pool.ntp.org
                FallbackNTP: 1.pool.ntp.org
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert dropin.read_text().split() == [
        "[Time]",
        "NTP=0.pool.ntp.org",
        "RootDistanceMaxSec=5",
        "FallbackNTP=1.pool.ntp.org",
    ]
    assert (root / "etc/systemd/timesyncd.conf").read_text() == "[Time]\n#NTP=\n"


def test_systemctl_enable_disable_mask_overrides(root: Path) -> None:
    write_config(
        root,
        "sc.yaml",
        """
        stages:
          boot:
            - systemctl:
                enable: [ssh, getty@tty2.service, "getty@.service"]
                mask: [systemd-networkd-wait-online]
                start: [ssh]
                overrides:
                  - service: ssh
                    content: "[Service]\\nRestart=always\\n"
                  - service: getty@tty2.service
                    name: 10-term
                    content: "[Service]\\nEnvironment=TERM=vt100\\n"
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    etc = root / "etc/systemd/system"
    wants = etc / "multi-user.target.wants/ssh.service"
    assert os.readlink(wants) == "/lib/systemd/system/ssh.service"
    assert os.readlink(etc / "sshd.service") == "/lib/systemd/system/ssh.service"  # Alias=
    assert os.readlink(etc / "getty.target.wants/getty@tty2.service") == (
        "/lib/systemd/system/getty@.service"
    )
    assert (etc / "getty.target.wants/getty@tty1.service").is_symlink()  # DefaultInstance
    assert os.readlink(etc / "systemd-networkd-wait-online.service") == "/dev/null"
    assert (etc / "ssh.service.d/override-yip.conf").read_text() == "[Service]\nRestart=always\n"
    assert (etc / "getty@tty2.service.d/10-term.conf").exists()

    write_config(root, "sc.yaml", "stages:\n  boot:\n    - systemctl:\n        disable: [ssh]\n")
    assert run_stage(root, "boot", "--strict") == 0
    assert not wants.is_symlink() and not (etc / "sshd.service").is_symlink()
    assert (etc / "getty.target.wants/getty@tty2.service").is_symlink()


def test_systemctl_missing_unit(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(root, "sc.yaml", "stages:\n  boot:\n    - systemctl:\n        enable: [nope]\n")
    assert run_stage(root, "boot", "--strict") == 1
    assert "unit nope.service not found" in capsys.readouterr().err


def test_environment_default_and_custom_file(root: Path) -> None:
    (root / "etc/environment").write_text('PATH="/usr/bin"\nKEEP=1\n')
    write_config(
        root,
        "e.yaml",
        """
        stages:
          boot:
            - environment:
                PATH: /usr/local/bin:/usr/bin
                NEW: 'say "hi"'
            - environment_file: /etc/kairos/env
              environment:
                K3S_TOKEN: abc
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "etc/environment").read_text() == (
        'PATH="/usr/local/bin:/usr/bin"\nKEEP=1\nNEW="say \\"hi\\""\n'
    )
    assert (root / "etc/kairos/env").read_text() == 'K3S_TOKEN="abc"\n'


def test_packages_argv_chrooted(root: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    write_config(
        root,
        "p.yaml",
        """
        stages:
          boot:
            - packages:
                refresh: true
                install: [curl, jq]
                remove: [nano]
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    r = str(root)
    assert recorded_commands == [
        ("chroot", r, "apt-get", "update"),
        ("chroot", r, "apt-get", "-y", "--no-install-recommends", "install", "curl", "jq"),
        ("chroot", r, "apt-get", "-y", "remove", "nano"),
    ]


def test_unsupported_keys_warn_and_continue(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        root,
        "u.yaml",
        """
        stages:
          boot:
            - unpack_images:
                - source: quay.io/x/y:z
                  target: /opt/y
              datasource:
                providers: [cdrom]
              package_pins:
                curl: "8.*"
              files:
                - path: /etc/after-unsupported
                  content: ok
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    err = capsys.readouterr().err
    for key in ("unpack_images", "datasource", "package_pins"):
        assert f"'{key}' is not supported yet" in err
    assert (root / "etc/after-unsupported").read_text() == "ok"


def test_ensure_and_delete_entities(root: Path) -> None:
    # The form upstream's default configs use (a group "admin" with a fixed gid).
    write_config(
        root,
        "e.yaml",
        """
        stages:
          initramfs:
            - ensure_entities:
                - entity: |
                    kind: "group"
                    group_name: "admin"
                    password: "x"
                    gid: 900
                - path: /etc/passwd
                  entity: |
                    kind: "user"
                    username: "svc"
                    uid: 901
                    gid: 900
                    info: "service"
                    homedir: "/var/lib/svc"
                    shell: "/bin/false"
                - entity: |
                    kind: "shadow"
                    username: "svc"
                    password: "plain"
                    last_changed: "now"
                - entity: |
                    kind: "gshadow"
                    name: "admin"
                    password: "!"
                    members: "svc"
              delete_entities:
                - entity: |
                    kind: "user"
                    username: "app"
        """,
    )
    assert run_stage(root, "initramfs", "--strict") == 0
    assert _row(root, "group", "admin") == ["admin", "x", "900", ""]
    assert _row(root, "passwd", "svc") == [
        "svc", "x", "901", "900", "service", "/var/lib/svc", "/bin/false"
    ]  # fmt: skip
    shadow = _row(root, "shadow", "svc")
    assert verify("plain", shadow[1]) and shadow[2].isdigit() and int(shadow[2]) > 19000
    assert _row(root, "gshadow", "admin") == ["admin", "!", "", "svc"]
    # commands (which run before delete_entities) would still have seen "app"; now it is gone
    assert "app:" not in (root / "etc/passwd").read_text()
    # running again changes nothing (the same lines are ensured)
    before = (root / "etc/group").read_text()
    assert run_stage(root, "initramfs", "--strict") == 0
    assert (root / "etc/group").read_text() == before


def test_entity_problems(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        root,
        "e.yaml",
        """
        stages:
          boot:
            - ensure_entities:
                - entity: "kind: robot"
                - entity: "kind: group"
                - path: /etc/other
                  entity: "{kind: user, username: x}"
        """,
    )
    assert run_stage(root, "boot", "--analyze") == 1
    out = capsys.readouterr().out
    assert "kind must be user, group, shadow or gshadow" in out
    assert "group_name is required" in out
    assert "only the default file of a user entity is supported" in out


def test_systemd_firstboot_argv(root: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    write_config(
        root,
        "f.yaml",
        """
        stages:
          initramfs:
            - systemd_firstboot:
                keymap: us
                timezone: UTC
                copy_locale: true
        """,
    )
    assert run_stage(root, "initramfs", "--strict") == 0
    assert recorded_commands == [
        (
            "systemd-firstboot",
            f"--root={root}",
            "--copy-locale",
            "--keymap=us",
            "--timezone=UTC",
        )
    ]


def test_user_fields_cannot_forge_account_lines(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        root,
        "u.yaml",
        """
        stages:
          boot:
            - users:
                "evil:x:0:0":
                  passwd: x
                ok:
                  gecos: "a:0:0:root"
                  shell: "/bin/sh\\nroot2::0:0::/:/bin/sh"
                  groups: ["sudo:x"]
        """,
    )
    before = (root / "etc/passwd").read_text()
    assert run_stage(root, "boot", "--strict") == 1
    err = capsys.readouterr().err
    assert "invalid user name 'evil:x:0:0'" in err
    assert "users.ok.gecos: must not contain ':'" in err
    assert "users.ok.shell: must not contain ':'" in err
    assert "invalid group name 'sudo:x'" in err
    assert (root / "etc/passwd").read_text() == before


def test_uid_taken_by_another_user(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(root, "u.yaml", "stages:\n  boot:\n    - users:\n        bob: {uid: 4242}\n")
    assert run_stage(root, "boot", "--strict") == 1
    assert "uid 4242 already belongs to 'app'" in capsys.readouterr().err


def _git(*args: str | Path) -> str:
    from kairos.run import run

    ident = ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "init.defaultBranch=main"]
    return run(["git", *ident, *args]).stdout.strip()


def test_git_clone_then_update(root: Path, tmp_path: Path, allow_commands: None) -> None:
    origin = tmp_path / "origin"
    origin.mkdir()
    _git("-C", origin, "init", "-q")
    (origin / "README").write_text("v1\n")
    _git("-C", origin, "add", "README")
    _git("-C", origin, "commit", "-qm", "v1")
    _git("-C", origin, "checkout", "-qb", "release")
    (origin / "README").write_text("release\n")
    _git("-C", origin, "commit", "-qam", "release")
    write_config(
        root,
        "g.yaml",
        f"""
        stages:
          boot:
            - git:
                url: file://{origin}
                path: /opt/app
                branch: main
                branch_only: true
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "opt/app/README").read_text() == "v1\n"
    _git("-C", origin, "checkout", "-q", "main")
    (origin / "README").write_text("v2\n")
    _git("-C", origin, "commit", "-qam", "v2")
    (root / "opt/app/README").write_text("local change\n")
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "opt/app/README").read_text() == "v2\n"


def test_git_credentials_are_redacted(
    root: Path, recorded_commands: list[tuple[str, ...]], capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        root,
        "g.yaml",
        """
        stages:
          boot:
            - git:
                url: https://git.example.org/team/repo.git
                path: /opt/repo
                auth: {username: bot, password: "s3cr3t/pw"}
        """,
    )
    assert main_debug(root) == 0
    assert recorded_commands == [
        (
            "git",
            "clone",
            "https://bot:s3cr3t%2Fpw@git.example.org/team/repo.git",
            str(root / "opt/repo"),
        )
    ]
    err = capsys.readouterr().err
    assert "+ git clone" in err  # the --debug command line is logged...
    assert "s3cr3t" not in err  # ...without the password


def main_debug(root: Path) -> int:
    from kairos.cli import main

    return main(["--debug", "--root", str(root), "run-stage", "boot", "--strict"])
