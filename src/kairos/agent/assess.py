"""The health point of a boot on trial, and the notice after a fallback.

`kairos-boot-assessment.service` runs `kairos-agent boot-assessment` after multi-user.target
on boots whose command line carries `kairos.assessment=` (GRUB adds it while a system is on
trial, see kairos.bootloader.assessment). The user's checks are the `boot-assessment` stage
of the cloud-config (any yip steps; a failing step fails the check), bounded by
`boot-assessment.timeout` seconds. Pass: the trial ends in favour of this system. Fail: no
more tries for it, and the machine reboots into the next system in line.

`--notice` (kairos-upgrade-notice.service, early in boot) reports a fallback: journal,
`/run/cos/upgrade_failure` (read by `kairos-agent state`), the console login banner
(/etc/issue.d) and the SSH/console motd (/run/motd.d).
"""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path

from kairos.bootloader import assessment as ba
from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run, which

log = logging.getLogger("kairos.agent")

STATE_MOUNT = "/run/initramfs/cos-state"
FAILURE_FILE = "/run/cos/upgrade_failure"
ISSUE_FILE = "/etc/issue.d/50-kairos-upgrade-failure.issue"
MOTD_FILE = "/run/motd.d/50-kairos-upgrade-failure"
STAGE = "boot-assessment"
DEFAULT_TIMEOUT = 300


def cmdline_words(ctx: Context) -> list[str]:
    try:
        return ctx.path("/proc/cmdline").read_text().split()
    except OSError:
        return []


def trial_of(words: list[str]) -> str:
    """`trying` (active on trial), `fallback` (passive on trial) or empty."""
    for word in words:
        key, _, value = word.partition("=")
        if key == ba.TRIAL_WORD:
            return value
    return ""


def notice_text(a: ba.Assessment, running: str, boot: str) -> str:
    failed = a.version or "the upgraded system"
    reason = a.reason or ba.no_report_reason(a)
    return (
        f"Upgrade to {failed} failed: {reason}.\n"
        f"This node fell back and runs {running or 'the previous system'} ({boot}).\n"
        "Details: kairos-agent state. Upgrade again to retry; the failed image is replaced.\n"
    )


def write_notice(ctx: Context) -> str:
    from kairos.agent.state import detect_boot
    from kairos.agent.upgrade_plan import running_version

    a = ba.read(ctx.path(STATE_MOUNT))
    text = notice_text(a, running_version(ctx), str(detect_boot(ctx)))
    for path, content in (
        (FAILURE_FILE, text),
        (MOTD_FILE, text),
        # agetty expands backslash escapes in issue files.
        (ISSUE_FILE, "\n*** " + text.replace("\\", "\\\\") + "\n"),
    ):
        target = ctx.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    # <4>: warning priority in the journal (systemd reads the prefix on a service's stdout).
    for line in text.splitlines():
        print(f"<4>{line}", flush=True)
    return text


def agent_argv() -> list[str]:
    exe = which("kairos-agent")
    return [exe] if exe else [sys.executable, "-m", "kairos"]


def run_checks(ctx: Context, timeout: int) -> str:
    """Empty when every `boot-assessment` step passed, else the reason."""
    argv = [*agent_argv(), "--root", str(ctx.root), "run-stage", STAGE, "--strict"]
    try:
        result = run(argv, check=False, timeout=timeout)
    except KairosError as exc:
        return f"health check did not finish: {exc.message.rstrip('.')}"
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {result.returncode}"
        return f"health check failed: {last}"
    return ""


def _writable(ctx: Context, stack: ExitStack) -> Path:
    from kairos.agent.upgrade import make_writable

    state_dir = ctx.path(STATE_MOUNT)
    make_writable(ctx, stack, state_dir)
    return state_dir


def finish_rotation(state_dir: Path) -> None:
    """A power cut between the slot swap and the rename of the old image leaves it as
    transition.img with no passive.img: finish that rename now that the new system is good."""
    import os

    cos = state_dir / "cOS"
    transition, passive = cos / "transition.img", cos / "passive.img"
    if transition.is_file() and not passive.exists():
        os.rename(transition, passive)
        print(f"boot-assessment: finished an interrupted upgrade: {transition.name} is now "
              f"{passive.name}.", flush=True)  # fmt: skip


def timeout_from(merged: dict[str, object]) -> int:
    section = merged.get("boot-assessment")
    value = section.get("timeout") if isinstance(section, dict) else None
    return value if isinstance(value, int) and value > 0 else DEFAULT_TIMEOUT


def assess(ctx: Context, merged: dict[str, object], *, notice_only: bool, reboot: bool) -> int:
    from kairos.agent.upgrade_plan import running_version

    words = cmdline_words(ctx)
    if ba.FAILURE_WORD in words:
        write_notice(ctx)
    if notice_only:
        return 0
    trial = trial_of(words)
    if not trial:
        print("boot-assessment: this boot is not on trial; nothing to assess.")
        return 0
    if not ctx.path(STATE_MOUNT).is_dir():
        raise KairosError(
            f"{STATE_MOUNT}: COS_STATE is not mounted; cannot record the assessment.",
            hint="the boot assessment runs on installed systems booted through GRUB",
        )
    reason = run_checks(ctx, timeout_from(merged))
    version = running_version(ctx)
    with ExitStack() as stack:
        state_dir = _writable(ctx, stack)
        if not reason:
            before = ba.read(state_dir)
            result = ba.record_good(state_dir, version)
            if before.phase is ba.Phase.TRYING and before.version == version:
                # The switch happened (this is the new system): finish what it left.
                finish_rotation(state_dir)
            print(f"boot-assessment: {version or 'this system'} reached the health point; "
                  f"{result.result or 'trial ended'}.", flush=True)  # fmt: skip
            return 0
        ba.record_failure(state_dir, f"{reason} (on {version or 'this system'})")
    print(f"<3>boot-assessment: {reason}; the next boot falls back.", flush=True)
    if reboot:
        tool = shutil.which("systemctl")
        run([tool, "reboot"] if tool else ["reboot"], check=False)
    return 1
