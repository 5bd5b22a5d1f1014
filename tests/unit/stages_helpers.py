"""Shared helpers for the stage tests: a throwaway root with account files and unit files."""

from __future__ import annotations

import textwrap
from pathlib import Path

from kairos.cli import main
from kairos.context import Context

PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
app:x:4242:4343:app user:/srv/app:/bin/sh
"""
GROUP = """root:x:0:
shadow:x:42:
sudo:x:27:
appgrp:x:4343:
nogroup:x:65534:
"""
SHADOW = "root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n"
GSHADOW = "root:*::\nshadow:*::\nsudo:*::\nappgrp:!::\n"
SSHD_UNIT = """[Unit]
Description=OpenSSH server

[Service]
ExecStart=/usr/sbin/sshd -D

[Install]
WantedBy=multi-user.target
Alias=sshd.service
"""
GETTY_UNIT = """[Unit]
Description=Getty on %I

[Service]
ExecStart=-/sbin/agetty %I

[Install]
WantedBy=getty.target
DefaultInstance=tty1
"""


def make_root(base: Path) -> Path:
    """A tiny Debian-like root: account files, os-release, systemd and two unit files."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text(SHADOW)
    (root / "etc/gshadow").write_text(GSHADOW)
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nNAME="Debian GNU/Linux"\n'
        'VERSION_ID="12"\n'
    )
    (root / "etc/hostname").write_text("oldname\n")
    units = root / "lib/systemd/system"
    units.mkdir(parents=True)
    (units / "ssh.service").write_text(SSHD_UNIT)
    (units / "getty@.service").write_text(GETTY_UNIT)
    (units / "static.service").write_text("[Service]\nExecStart=/bin/true\n")
    (root / "lib/systemd/systemd").write_text("")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/apt-get").write_text("")
    return root


def write_config(root: Path, name: str, text: str, where: str = "oem") -> Path:
    path = root / where / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_stage(root: Path, *args: str) -> int:
    return main(["--root", str(root), "run-stage", *args])


def ctx_for(root: Path) -> Context:
    return Context(root=root)
