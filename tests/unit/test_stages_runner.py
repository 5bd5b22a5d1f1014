"""Stage runner: sub-stages, order and `after:`, conditions, strict mode, --analyze, cmdline."""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.context import Context
from kairos.stages import loader, runner
from kairos.stages.model import Layout, Partition, StageFile, Step
from kairos.stages.steps import layout as layout_step
from kairos.stages.steps import plugins
from tests.unit.stages_helpers import make_root, run_stage, write_config

Spawn = Callable[..., tuple[int, bytes, bytes]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, tuple[int, str]]], list[str]]:
    """Replace the runner with canned answers per command substring; record every argv."""

    def install(answers: dict[str, tuple[int, str]]) -> list[str]:
        calls: list[str] = []

        def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
            line = " ".join(argv)
            calls.append(line)
            for needle, (code, out) in answers.items():
                if needle in line:
                    return code, out.encode(), b""
            return 0, b"", b""

        monkeypatch.setattr("kairos.run._spawn", fake)
        return calls

    return install


def _marks(root: Path) -> list[str]:
    path = root / "marks"
    return path.read_text().replace('"', "").split() if path.exists() else []


def _mark_step(name: str, extra: str = "") -> str:
    # a files step that appends a marker: order becomes visible without running commands
    return f"""
    - name: {name}
      {extra}
      environment_file: /marks
      environment:
        {name}: "1"
"""


def test_plugin_order_is_upstreams() -> None:
    assert [p.name for p in plugins()] == [
        "dns",
        "downloads",
        "git",
        "ensure_entities",
        "directories",
        "files",
        "commands",
        "delete_entities",
        "hostname",
        "sysctl",
        "users",
        "authorized_keys",
        "modules",
        "timesyncd",
        "systemctl",
        "environment",
        "systemd_firstboot",
        "datasource",
        "layout",
        "package_pins",
        "packages",
        "unpack_images",
    ]


def test_before_stage_after_and_file_order(root: Path) -> None:
    write_config(root, "20_b.yaml", "stages:\n  boot:" + _mark_step("B"))
    write_config(root, "10_a.yaml", "stages:\n  boot.after:" + _mark_step("AFTER"))
    write_config(root, "sub/05_c.yaml", "stages:\n  boot:" + _mark_step("C"))
    write_config(root, "30.yml", "stages:\n  boot.before:" + _mark_step("BEFORE"))
    write_config(root, "40.txt", "stages:\n  boot:" + _mark_step("IGNORED"))
    write_config(root, "50_sys.yaml", "stages:\n  boot:" + _mark_step("SYS"), where="system/oem")
    assert run_stage(root, "boot", "--strict") == 0
    # /system/oem first, then /oem walked lexically (files before a later subdirectory)
    assert _marks(root) == ["BEFORE=1", "SYS=1", "B=1", "C=1", "AFTER=1"]


def test_after_reorders_steps(root: Path) -> None:
    write_config(
        root,
        "a.yaml",
        "name: first\nstages:\n  boot:"
        + _mark_step("X", "after: [{name: second.Y}]")
        + _mark_step("Z"),
    )
    write_config(root, "b.yaml", "name: second\nstages:\n  boot:" + _mark_step("Y"))
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == ["Z=1", "Y=1", "X=1"]


def test_after_cycle(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        root,
        "c.yaml",
        "name: cyc\nstages:\n  boot:"
        + _mark_step("P", "after: [{name: cyc.Q}]")
        + _mark_step("Q", "after: [{name: cyc.P}]")
        + "    - after: [{name: cyc.P}]\n      environment_file: /marks\n"
        "      environment: {WAITS: '1'}\n",
    )
    plan = runner.plan_stage(loader.load_sources(Context(root=root), ["/oem"]), "boot")
    assert plan.problems and "cycle" in plan.problems[0]
    assert run_stage(root, "boot") == 0
    assert _marks(root) == []  # cyc.2 waits on the cycle too
    assert run_stage(root, "boot", "--strict") == 1
    assert "cycle between cyc.P, cyc.Q" in capsys.readouterr().err


def test_after_by_index(root: Path) -> None:
    write_config(
        root,
        "idx.yaml",
        """
        stages:
          boot:
            - after: [{name: /oem/idx.yaml.1}]
              environment_file: /marks
              environment: {I0: "1"}
            - environment_file: /marks
              environment: {I1: "1"}
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == ["I1=1", "I0=1"]


def test_non_strict_goes_on_strict_stops(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(
        root,
        "s.yaml",
        """
        stages:
          boot:
            - systemctl:
                enable: [missing-unit]
              environment_file: /marks
              environment: {SAME_STEP: "1"}
            - environment_file: /marks
              environment: {NEXT: "1"}
        """,
    )
    assert run_stage(root, "boot") == 0
    assert _marks(root) == ["SAME_STEP=1", "NEXT=1"]
    assert "1 errors" in capsys.readouterr().err
    (root / "marks").unlink()
    assert run_stage(root, "boot", "--strict") == 1
    assert _marks(root) == []
    err = capsys.readouterr().err
    assert "boot: /oem/s.yaml.0: systemctl: systemctl enable: unit missing-unit.service" in err


def test_invalid_step_reported_with_line_others_run(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        root,
        "bad.yaml",
        """
        stages:
          boot:
            - files:
                - path: /etc/x
                  permissions: rw-r--r--
            - environment_file: /marks
              environment: {OK: "1"}
              typo_key: 1
        """,
    )
    assert run_stage(root, "boot") == 0
    err = capsys.readouterr().err
    assert "/oem/bad.yaml:5: stages.boot[0].files[0].permissions: expected an octal mode" in err
    assert "/oem/bad.yaml:8: stages.boot[1].typo_key: unknown step key, ignored" in err
    assert not (root / "etc/x").exists()
    assert _marks(root) == ["OK=1"]


def test_bad_yaml_file_does_not_stop_others(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(root, "00_bad.yaml", "stages:\n  boot: [\n")
    write_config(root, "10_ok.yaml", "stages:\n  boot:" + _mark_step("OK"))
    assert run_stage(root, "boot") == 0
    assert _marks(root) == ["OK=1"]
    assert "/oem/00_bad.yaml:" in capsys.readouterr().err
    assert run_stage(root, "boot", "--strict") == 1


def test_static_conditions(root: Path) -> None:
    (root / "present").write_text("")
    arch = platform.machine()
    write_config(
        root,
        "c.yaml",
        "stages:\n  boot:"
        + _mark_step("OS", "only_os: deb.*")
        + _mark_step("NOTOS", "only_os: alpine")
        + _mark_step("PRETTY", "only_os: 'bookworm'")
        + _mark_step("VER", "only_os_version: '^12$'")
        + _mark_step("ARCH", f"only_arch: {arch}")
        + _mark_step("NOARCH", "only_arch: riscv128")
        + _mark_step("SYSTEMD", "only_service_manager: systemd")
        + _mark_step("OPENRC", "only_service_manager: openrc")
        + _mark_step("NODE", "node: '^old'")
        + _mark_step("NONODE", "node: other")
        + _mark_step("ANY", "if_files: {any: [/nope, /present]}")
        + _mark_step("ALL", "if_files: {all: [/nope, /present]}")
        + _mark_step("NONE", "if_files: {none: [/nope]}")
        + _mark_step("NONE2", "if_files: {none: [/present]}"),
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == [
        "OS=1",
        "PRETTY=1",
        "VER=1",
        "ARCH=1",
        "SYSTEMD=1",
        "NODE=1",
        "ANY=1",
        "NONE=1",
    ]


def test_if_condition_runs_in_root(
    root: Path, scripted: Callable[[dict[str, tuple[int, str]]], list[str]]
) -> None:
    calls = scripted({"test -e /no": (1, "")})
    write_config(
        root,
        "i.yaml",
        "stages:\n  boot:"
        + _mark_step("YES", "if: '[ -d /etc ]'")
        + _mark_step("NO", "if: 'test -e /no'"),
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == ["YES=1"]
    assert calls == [
        f"chroot {root} /bin/sh -c [ -d /etc ]",
        f"chroot {root} /bin/sh -c test -e /no",
    ]


def test_analyze_runs_nothing(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No command fixture: any command (including the `if:`) would fail this unit test.
    write_config(
        root,
        "a.yaml",
        """
        name: demo
        stages:
          boot.before:
            - commands: [reboot]
              if: "true"
          boot:
            - name: one
              files: [{path: /etc/a, content: a}]
              commands: [echo hi]
            - name: two
              after: [{name: demo.one}]
              only_os: alpine
              users: {bob: {passwd: x}}
              unpack_images: [{source: quay.io/x/y, target: /y}]
        """,
    )
    assert run_stage(root, "boot", "--analyze") == 0
    out = capsys.readouterr().out
    assert "boot.before:\n 1.\n  <demo.0> commands [if if: true]" in out
    assert "  <demo.one> files, commands" in out
    assert (
        "<demo.two> users, unpack_images (not supported yet) (after: demo.one) [if only_os: alpine]"
        in out
    )
    assert "(skipped: only_os 'alpine' does not match 'debian')" in out
    assert "boot.after: nothing to run" in out
    assert not (root / "etc/a").exists()


def test_analyze_reports_problems_exit_1(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(root, "a.yaml", "stages:\n  boot:\n    - users: [not, a, map]\n")
    assert run_stage(root, "boot", "--analyze") == 1
    assert "/oem/a.yaml:3: stages.boot[0].users: expected a mapping" in capsys.readouterr().out


def test_cloud_init_paths_and_override(root: Path, tmp_path: Path) -> None:
    write_config(root, "a.yaml", "stages:\n  boot:" + _mark_step("OEM"))
    write_config(root, "x.yaml", "stages:\n  boot:" + _mark_step("EXTRA"), where="extra")
    write_config(root, "y.yaml", "stages:\n  boot:" + _mark_step("Y"), where="more")
    assert run_stage(root, "--cloud-init-paths", "/extra/x.yaml", "boot") == 0
    assert _marks(root) == ["OEM=1", "EXTRA=1"]
    (root / "marks").unlink()
    assert run_stage(root, "boot", "--cloud-init-paths", "/more,/extra/x.yaml") == 0
    assert _marks(root) == ["OEM=1", "Y=1", "EXTRA=1"]
    (root / "marks").unlink()
    assert (
        run_stage(root, "boot", "--cloud-init-paths", "/extra", "--override-cloud-init-paths") == 0
    )
    assert _marks(root) == ["EXTRA=1"]


def test_cloud_init_compat_mapping(root: Path) -> None:
    write_config(
        root,
        "ci.yaml",
        """
        #cloud-config
        hostname: compat-host
        users:
          - name: kairos
            passwd: kairos
            groups: [sudo]
            ssh_authorized_keys: ["ssh-rsa LOCAL", "github:someone"]
        ssh_authorized_keys: ["ssh-rsa GLOBAL"]
        write_files:
          - path: /etc/wf
            content: d3JpdGUgZmlsZXM=
            encoding: b64
            owner: kairos:kairos
            permissions: "0600"
        runcmd:
          - echo from runcmd
        growpart:
          devices: [/dev/vda]
        """,
    )
    files = loader.load_sources(Context(root=root), ["/oem"], cmdline=False)
    (f,) = files
    assert f.problems == ()
    boot = f.stages["boot"]
    assert [s.name for s in boot] == ["cloud-init", "cloud-init-growpart-0"]
    assert boot[0].users[0].name == "kairos" and boot[0].commands == ("echo from runcmd",)
    assert boot[0].authorized_keys == {"kairos": ("ssh-rsa LOCAL", "ssh-rsa GLOBAL")}
    assert boot[1].layout == Layout(device_path="/dev/vda", expand_size_mib=0)
    assert f.stages["network"][0].authorized_keys == {"kairos": ("github:someone",)}
    assert f.stages["initramfs"][0].hostname == "compat-host"


def test_cloud_init_compat_applied(root: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    write_config(
        root,
        "ci.yaml",
        """
        #cloud-config
        users:
          - name: kairos
            passwd: kairos
        ssh_authorized_keys: ["ssh-rsa GLOBAL"]
        write_files:
          - path: /etc/wf
            content: d3JpdGUgZmlsZXM=
            encoding: base64
            owner: root:root
        runcmd: [echo hi]
        """,
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert (root / "etc/wf").read_text() == "write files"
    assert (root / "home/kairos/.ssh/authorized_keys").read_text() == "ssh-rsa GLOBAL\n"
    assert recorded_commands == [("chroot", str(root), "/bin/sh", "-c", "echo hi")]


def test_headerless_files_run_stages_but_not_compat_keys(root: Path) -> None:
    write_config(root, "h.yaml", "hostname: ignored\nstages:\n  boot:" + _mark_step("H"))
    files = loader.load_sources(Context(root=root), ["/oem"], cmdline=False)
    assert set(files[0].stages) == {"boot"}
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == ["H=1"]


def test_cmdline_stages(root: Path) -> None:
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text(
        "quiet stages.boot[0].environment_file=/marks stages.boot[0].environment.CMD=1 "
        '"stages.boot[1].files[0].path=/etc/from cmdline" console=ttyS0\n'
    )
    assert run_stage(root, "boot", "--strict") == 0
    assert _marks(root) == ["CMD=1"]
    assert (root / "etc/from cmdline").exists()


def test_cmdline_parser_shapes() -> None:
    tree, urls = loader.cmdline_config(
        "a=b console=ttyS0 stages.x[0].commands[1]=two stages.x[0].commands[0]=one "
        "install.device=/dev/vda kairos.config_url=http://h/c"
    )
    assert tree == {"stages": {"x": [{"commands": ["one", "two"]}]}}
    assert urls == ["http://h/c"]


def test_stage_files_are_rendered_as_templates(root: Path) -> None:
    write_config(
        root,
        "t.yaml",
        """
        stages:
          initramfs:
            - hostname: "kairos-{{ trunc 4 .Random }}"
            - files:
                - path: /etc/vendor
                  content: "{{ .Values.os.vendor }}"
        """,
    )
    assert run_stage(root, "initramfs", "--strict") == 0
    name = (root / "etc/hostname").read_text().strip()
    assert name.startswith("kairos-") and len(name) == len("kairos-") + 4
    assert (root / "etc/vendor").read_text() == "debian"


def test_template_error_is_a_problem_with_line(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(root, "t.yaml", "stages:\n  boot:\n    - hostname: '{{ nosuchfunc 1 }}'\n")
    assert run_stage(root, "boot", "--strict") == 1
    assert "/oem/t.yaml" in capsys.readouterr().err


def test_layout_refused_under_root(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(root, "l.yaml", "stages:\n  boot:\n    - layout: {device: {path: /dev/sda}}\n")
    assert run_stage(root, "boot", "--strict") == 1
    assert "layout changes real disks; refused under --root" in capsys.readouterr().err


def test_layout_new_disk_exact_argv(recorded_commands: list[tuple[str, ...]]) -> None:
    step = Step(
        root_name="t",
        index=0,
        layout=Layout(
            device_path="/dev/vdb",
            init_disk=True,
            add_partitions=(
                Partition(fs_label="COS_GRUB", size_mib=64, p_label="efi", filesystem="vfat"),
                Partition(fs_label="COS_OEM", size_mib=0, p_label="oem", filesystem="ext4"),
            ),
        ),
    )
    layout_step.apply(step, Context(root=Path("/")))
    assert recorded_commands == [
        ("sgdisk", "--zap-all", "/dev/vdb"),
        ("sgdisk", "--clear", "/dev/vdb"),
        ("sfdisk", "--json", "/dev/vdb"),
        ("sgdisk", "--new=1:0:+64M", "--typecode=1:ef00", "--change-name=1:efi", "/dev/vdb"),
        ("partx", "-u", "/dev/vdb"),
        ("udevadm", "settle"),
        ("mkfs.vfat", "-n", "COS_GRUB", "/dev/vdb1"),
        ("sgdisk", "--new=2:0:0", "--typecode=2:8300", "--change-name=2:oem", "/dev/vdb"),
        ("partx", "-u", "/dev/vdb"),
        ("udevadm", "settle"),
        ("mkfs.ext4", "-F", "-L", "COS_OEM", "/dev/vdb2"),
    ]


def test_layout_by_label_add_and_expand(
    scripted: Callable[[dict[str, tuple[int, str]]], list[str]],
) -> None:
    table = (
        '{"partitiontable": {"label": "gpt", "partitions": ['
        '{"node": "/dev/nvme0n1p1"}, {"node": "/dev/nvme0n1p2"}]}}'
    )
    calls = scripted(
        {
            "LABEL=COS_RECOVERY": (0, "/dev/nvme0n1p2\n"),
            "PKNAME": (0, "nvme0n1\n"),
            "sfdisk --json": (0, table),
            "-s TYPE": (0, "ext4\n"),
        }
    )
    step = Step(
        root_name="t",
        index=0,
        layout=Layout(
            device_label="COS_RECOVERY",
            device_path="/dev/sda",
            expand_size_mib=4096,
            add_partitions=(Partition(fs_label="COS_STATE", size_mib=8192, p_label="state"),),
        ),
    )
    layout_step.apply(step, Context(root=Path("/")))
    assert calls == [
        "blkid -l -o device -t LABEL=COS_RECOVERY",
        "lsblk --noheadings --nodeps -o PKNAME /dev/nvme0n1p2",
        "sfdisk --json /dev/nvme0n1",
        "sgdisk --new=3:0:+8192M --typecode=3:8300 --change-name=3:state /dev/nvme0n1",
        "partx -u /dev/nvme0n1",
        "udevadm settle",
        "mkfs.ext2 -F -L COS_STATE /dev/nvme0n1p3",
        "sfdisk --json /dev/nvme0n1",
        "sfdisk --no-reread -N 3 /dev/nvme0n1",
        "partx -u /dev/nvme0n1",
        "udevadm settle",
        "blkid -o value -s TYPE /dev/nvme0n1p3",
        "e2fsck -fy /dev/nvme0n1p3",
        "resize2fs /dev/nvme0n1p3",
    ]


def test_layout_script_device(scripted: Callable[[dict[str, tuple[int, str]]], list[str]]) -> None:
    calls = scripted({"pick-disk.sh": (0, "/dev/vdc\n")})
    step = Step(
        root_name="t",
        index=0,
        layout=Layout(
            device_path="script:///usr/local/bin/pick-disk.sh small",
            add_partitions=(Partition(size_mib=10),),
        ),
    )
    layout_step.apply(step, Context(root=Path("/")))
    assert calls[0] == "/bin/sh -c /usr/local/bin/pick-disk.sh small"
    assert "sgdisk --new=1:0:+10M --typecode=1:8300 /dev/vdc" in calls
    assert calls[-1] == "mkfs.ext2 -F /dev/vdc1"


def test_strict_checks_everything_before_running(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(
        root,
        "s.yaml",
        """
        stages:
          boot:
            - environment_file: /marks
              environment: {FIRST: "1"}
          boot.after:
            - files: [{path: /etc/x, permissions: 99999}]
            - users: {bob: {uid: abc}}
        """,
    )
    assert run_stage(root, "boot", "--strict") == 1
    err = capsys.readouterr().err
    assert "2 problem(s) in the stage files; nothing was run" in err
    assert "stages.boot.after[0].files[0].permissions" in err
    assert "stages.boot.after[1].users.bob.uid: expected an integer" in err
    assert _marks(root) == []
    assert run_stage(root, "boot") == 0  # non-strict: the valid step runs
    assert _marks(root) == ["FIRST=1"]


def test_strict_validation_turns_warnings_into_problems(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(root, "w.yaml", "stages:\n  boot:\n    - fles: []\n")
    assert run_stage(root, "boot", "--strict") == 0
    assert main_args(root, "--strict-validation", "run-stage", "boot", "--strict") == 1
    assert "stages.boot[0].fles: unknown step key" in capsys.readouterr().err


def main_args(root: Path, *args: str) -> int:
    from kairos.cli import main

    return main(["--root", str(root), *args])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 7), max_size=3), min_size=1, max_size=8))
def test_plan_order_property(afters: list[list[int]]) -> None:
    """Any `after:` graph: every step runs once, after what it names; only cycles block."""
    n = len(afters)
    steps = tuple(
        Step(root_name="f", index=i, name=f"s{i}", after=tuple(f"f.s{j}" for j in a if j < n))
        for i, a in enumerate(afters)
    )
    plan = runner.plan_stage([StageFile(source="f", name="f", stages={"boot": steps})], "boot")
    order = [op.step.index for op in plan.ops]
    assert len(order) == len(set(order))
    position = {i: k for k, i in enumerate(order)}
    for i in order:
        for j in steps[i].after:
            target = int(j.removeprefix("f.s"))
            if target != i:
                assert position[target] < position[i]

    # The steps left out are exactly those on or behind an `after:` cycle.
    graph = {i: {int(j.removeprefix("f.s")) for j in s.after} - {i} for i, s in enumerate(steps)}
    runnable: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, deps in graph.items():
            if i not in runnable and deps <= runnable:
                runnable.add(i)
                changed = True
    assert set(order) == runnable
    assert bool(plan.problems) == (runnable != set(graph))


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    from kairos.cli import main

    with pytest.raises(SystemExit):
        main(["run-stage", "--help"])
    out = capsys.readouterr().out
    assert "kairos-agent run-stage boot --analyze" in out
    for flag in ("--strict", "--cloud-init-paths", "--override-cloud-init-paths", "--analyze"):
        assert flag in out


def test_unexpected_plugin_bug_non_strict_goes_on(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(step: Step, ctx: Context) -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr("kairos.stages.steps.system.apply_hostname", boom)
    write_config(root, "b.yaml", "stages:\n  boot:\n    - hostname: x\n" + _mark_step("AFTER")[1:])
    assert run_stage(root, "boot") == 0
    assert _marks(root) == ["AFTER=1"]
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and "Traceback" in err
    with pytest.raises(ZeroDivisionError):
        run_stage(root, "boot", "--strict")
