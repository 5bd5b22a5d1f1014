"""immucore: the layout env parser, /etc/fstab text, the failure banner and `--dry-run`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kairos.errors import ConfigError
from kairos.immucore.__main__ import main
from kairos.immucore.banner import banner
from kairos.immucore.bootstate import Cmdline
from kairos.immucore.layout import DEFAULT_RW_PATHS, Layout, Volume, overlay_size, parse_env
from kairos.immucore.planner import plan_layout
from kairos.stages.steps.system import _quote

ROOTFS_YAML = Path(__file__).resolve().parents[2] / "src/kairos/resources/system-oem/00_rootfs.yaml"
ACTIVE = "root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img rd.cos.oemtimeout=10"


def test_parse_env_forms() -> None:
    text = """# written by the rootfs stage
VOLUMES="LABEL=COS_PERSISTENT:/usr/local"
export OVERLAY=tmpfs:25%
RW_PATHS='/var /etc /srv'
EMPTY=
QUOTED="a \\"b\\" c\\\\d\\n"  # trailing comment
PLAIN=x # comment
VOLUMES="LABEL=OTHER:/data"
"""
    assert parse_env(text) == {
        "VOLUMES": "LABEL=OTHER:/data",  # the last one wins, as in a shell
        "OVERLAY": "tmpfs:25%",
        "RW_PATHS": "/var /etc /srv",
        "EMPTY": "",
        "QUOTED": 'a "b" c\\d\n',
        "PLAIN": "x",
    }


def test_parse_env_reads_what_the_stage_runner_writes() -> None:
    # The environment_file step quotes values with _quote: the parser must be its inverse.
    values = {"A": 'x "y" \\z', "B": "multi\nline", "C": "/etc /var", "D": ""}
    text = "".join(f"{k}={_quote(v)}\n" for k, v in values.items())
    assert parse_env(text) == values


def test_parse_env_reports_every_bad_line() -> None:
    text = 'GOOD=1\nno equals sign\nBAD="unterminated\n1X=2\nQ="a" b\n'
    with pytest.raises(ConfigError) as err:
        parse_env(text, "/run/cos/cos-layout.env")
    assert err.value.problems == (
        "/run/cos/cos-layout.env:2: not a KEY=value line: 'no equals sign'",
        "/run/cos/cos-layout.env:3: BAD: unterminated double quote",
        "/run/cos/cos-layout.env:4: not a KEY=value line: '1X=2'",
        "/run/cos/cos-layout.env:5: Q: text after the closing quote: 'b'",
    )
    assert err.value.message == "/run/cos/cos-layout.env: 4 bad line(s)."


def test_layout_defaults_without_keys() -> None:
    layout = Layout.from_env({})
    assert layout.rw_paths == DEFAULT_RW_PATHS
    assert layout.overlay == "tmpfs:20%"
    assert layout.volumes == ()
    assert layout.persistent_paths == ()
    assert layout.persistent_target == "/usr/local/.state"
    assert (layout.persistent_bind, layout.merge, layout.from_file) == (False, True, True)


def test_layout_merges_custom_layout_env() -> None:
    layout = Layout.from_env(
        {"RW_PATHS": "/var /etc", "PERSISTENT_STATE_PATHS": "/home /etc/ssh/"},
        {"CUSTOM_BIND_MOUNTS": "/var/lib/app /home", "CUSTOM_EPHEMERAL_MOUNTS": "/srv/tmp"},
    )
    assert layout.persistent_paths == ("/home", "/etc/ssh", "/var/lib/app")
    assert layout.rw_paths == ("/var", "/etc", "/srv/tmp")


def test_layout_reports_every_problem() -> None:
    env = {
        "VOLUMES": "LABEL=X:/ok nocolon",
        "RW_PATHS": "/var etc /",
        "PERSISTENT_STATE_TARGET": "usr/local",
        "OVERLAY": "tmpfs:0%",
    }
    with pytest.raises(ConfigError) as err:
        Layout.from_env(env)
    assert err.value.problems == (
        "VOLUMES: 'nocolon' is not DEVICE:/mountpoint (e.g. LABEL=COS_PERSISTENT:/usr/local)",
        "RW_PATHS: 'etc' is not an absolute path below /",
        "RW_PATHS: '/' is not an absolute path below /",
        "PERSISTENT_STATE_TARGET: 'usr/local' is not an absolute path",
        "OVERLAY: 'tmpfs:0%': bad size '0%' (use 25% or 2G)",
    )


@pytest.mark.parametrize(
    ("spec", "size"),
    [("tmpfs:25%", "25%"), ("tmpfs:2G", "2G"), ("tmpfs:512m", "512m"), ("LABEL=SCR", None),
     ("UUID=1-2", None), ("tmpfs:1024", "1024")],
)  # fmt: skip
def test_overlay_size(spec: str, size: str | None) -> None:
    assert overlay_size(spec) == size


@pytest.mark.parametrize(
    "spec", ["tmpfs", "tmpfs:", "tmpfs:101%", "tmpfs:x%", "disk:1G", "tmpfs:2T"]
)
def test_overlay_size_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        overlay_size(spec)


def test_shipped_rootfs_yaml_is_upstreams_layout() -> None:
    doc = yaml.safe_load(ROOTFS_YAML.read_text())
    active, recovery = doc["stages"]["rootfs"]
    env = active["environment"]
    assert active["environment_file"] == recovery["environment_file"] == "/run/cos/cos-layout.env"
    assert env["VOLUMES"] == "LABEL=COS_PERSISTENT:/usr/local"
    assert env["OVERLAY"] == "tmpfs:25%"
    assert env["RW_PATHS"] == "/var /etc /srv"
    assert env["PERSISTENT_STATE_BIND"] == "true"
    paths = env["PERSISTENT_STATE_PATHS"].split()
    # Upstream's list (reference §3) without /usr/libexec (dropped upstream, kairos#4465),
    # with /etc/ssl/private (added upstream, kairos#4414) and the Debian snap paths.
    upstream = [
        "/etc/cni",
        "/etc/init.d",
        "/etc/iscsi",
        "/etc/k0s",
        "/etc/kubernetes",
        "/etc/modprobe.d",
        "/etc/pwx",
        "/etc/rancher",
        "/etc/runlevels",
        "/etc/ssh",
        "/etc/ssl/certs",
        "/etc/sysconfig",
        "/etc/systemd",
        "/etc/zfs",
        "/home",
        "/opt",
        "/root",
        "/var/cores",
        "/var/lib/ca-certificates",
        "/var/lib/cni",
        "/var/lib/containerd",
        "/var/lib/calico",
        "/var/lib/dbus",
        "/var/lib/etcd",
        "/var/lib/extensions",
        "/var/lib/confexts",
        "/var/lib/k0s",
        "/var/lib/kubelet",
        "/var/lib/longhorn",
        "/var/lib/osd",
        "/var/lib/rancher",
        "/var/lib/rook",
        "/var/lib/tailscale",
        "/var/lib/wicked",
        "/var/lib/kairos",
        "/var/log",
    ]
    expected = [p for p in upstream if p != "/usr/libexec"] + [
        "/etc/ssl/private", "/snap", "/var/snap", "/var/lib/snapd"
    ]  # fmt: skip
    assert len(paths) == len(set(paths)) == 40
    assert sorted(paths) == sorted(expected)
    assert recovery["environment"] == {"OVERLAY": "tmpfs:25%"}
    assert "autoreset_mode" in active["if"] and "autoreset_mode" in recovery["if"]
    layout = Layout.from_env({k: str(v) for k, v in env.items()})
    assert layout.volumes == (Volume("LABEL=COS_PERSISTENT", "/usr/local"),)
    names = [s["name"] for s in doc["stages"]["initramfs"]]
    assert "Persist machine-id" in names


def test_fstab_text() -> None:
    layout = Layout.from_env(
        {
            "VOLUMES": "LABEL=COS_PERSISTENT:/usr/local",
            "OVERLAY": "tmpfs:25%",
            "RW_PATHS": "/etc",
            "PERSISTENT_STATE_PATHS": "/etc/ssh",
            "PERSISTENT_STATE_BIND": "true",
        }
    )
    plan = plan_layout(Cmdline.parse(ACTIVE), layout)
    assert plan.fstab() == (
        "# Written at boot by immucore: the immutable layout of this boot.\n"
        "/dev/disk/by-label/COS_ACTIVE / auto ro 0 0\n"
        "/dev/disk/by-label/COS_OEM /oem auto defaults 0 0\n"
        "tmpfs /run/overlay tmpfs defaults,size=25% 0 0\n"
        "tmpfs /tmp tmpfs defaults,mode=1777 0 0\n"
        "overlay /etc overlay defaults,lowerdir=/etc,upperdir=/run/overlay/etc/.overlay/upper,"
        "workdir=/run/overlay/etc/.overlay/work 0 0\n"
        "/dev/disk/by-label/COS_PERSISTENT /usr/local auto defaults 0 0\n"
        "/usr/local/.state/etc-ssh.bind /etc/ssh none defaults,bind 0 0\n"
    )


def test_banner() -> None:
    text = banner("mount state LABEL=COS_STATE", "not found.", "/run/immucore/immucore.log",
                  reboot=False)  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == lines[-1] == "#" * 72
    assert lines[1] == "# KAIROS BOOT FAILED"
    assert "# step:  mount state LABEL=COS_STATE" in lines
    assert "# error: not found." in lines
    assert "# log:   /run/immucore/immucore.log" in lines
    assert any("emergency" in line for line in lines)
    rebooting = banner("x", "y", "z", reboot=True)
    assert "# The machine reboots now (rd.immucore.rebootonfailure)." in rebooting.splitlines()


def test_dry_run_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = tmp_path / "cos-layout.env"
    env.write_text('VOLUMES="LABEL=COS_PERSISTENT:/usr/local"\nRW_PATHS="/etc"\n'
                   'PERSISTENT_STATE_PATHS="/home"\nPERSISTENT_STATE_BIND="true"\n')  # fmt: skip
    assert main(["--dry-run", "--cmdline", ACTIVE, "--layout-env", str(env)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:16] == [
        "immucore plan: active boot",
        " 1. write /run/cos/active_mode",
        " 2. wait for LABEL=COS_STATE (up to 120 s), mount it read-only at "
        "/run/initramfs/cos-state",
        " 3. loop-attach /run/initramfs/cos-state/cOS/active.img read-only, udev names it "
        "/dev/disk/by-label/COS_ACTIVE",
        " 4. systemd mounts /dev/disk/by-label/COS_ACTIVE read-only at /sysroot",
        " 5. mount LABEL=COS_OEM at /sysroot/oem (optional, wait 10 s)",
        " 6. run the rootfs stage in the initramfs (/sysroot/system/oem /sysroot/oem "
        "/sysroot/usr/local/cloud-config)",
        f" 7. read the layout ({env})",
        " 8. mount tmpfs at /run/overlay (size=20%)",
        " 9. mount tmpfs at /sysroot/tmp (mode=1777)",
        "10. overlay /sysroot/etc over the image, upper /run/overlay/etc/.overlay/upper",
        "11. mount LABEL=COS_PERSISTENT at /sysroot/usr/local (optional, wait 10 s)",
        "12. bind /sysroot/usr/local/.state/home.bind at /sysroot/home (seeded from "
        "/sysroot/home on first use only)",
        "13. write /sysroot/etc/fstab",
        "14. run the initramfs stage chrooted in /sysroot",
        "15. hand over to switch-root",
    ]
    assert out[16] == "fstab:"
    assert out[-1] == "/usr/local/.state/home.bind /home none defaults,bind 0 0"


def test_dry_run_from_a_file_and_live(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=LABEL=COS_SYSTEM cos-img/filename=/cOS/recovery.img\n")
    assert main(["--dry-run", "--cmdline", f"@{cmdline}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("immucore plan: recovery boot\n")
    assert "LABEL=COS_RECOVERY" in out
    assert "read the layout (none given: upstream's built-in layout)" in out
    assert main(["--dry-run", "--cmdline", "root=live:CDLABEL=COS_LIVE rd.cos.disable"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "immucore plan: live boot"


def test_dry_run_bad_cmdline_raises_with_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        main(["--dry-run", "--cmdline", "root=/dev/sda1"])
    assert len(err.value.problems) == 2
