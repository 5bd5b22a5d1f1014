"""Boot assessment: a new system is on trial until it proves it boots, else GRUB falls back.

State lives in `COS_STATE:/boot_assessment`, a GRUB environment block that both GRUB (at every
boot, `save_env`) and the agent (atomic rename) write. Only these variables matter:

- `ba_state`: empty (nothing on trial), `trying` (the new active image is on trial),
  `failed` (active failed; passive on trial), `fellback` (passive proved good after a failed
  upgrade; it stays the default until the next upgrade), `recovery` (passive failed too).
- `ba_tries`: boots left in the current trial; GRUB counts it down *before* each trial boot,
  so a boot that never reaches the health point (kernel panic, missing init, hang, power
  cut) has used its try. `ba_fallback_tries`: the tries passive gets after active failed.
- `ba_version`, `ba_previous`, `ba_reason`, `ba_armed`: what the report (`kairos-agent
  state`, login banner) says about the last upgrade.

An upgrade writes the whole block afresh (`arm`), so no flag of an earlier trial can survive
into the next one (the stale-flag fallback of upstream kairos#4303 cannot happen).
The health point (`kairos-agent boot-assessment`) ends a trial with `record_good` or
`record_failure`. An explicit one-shot choice (`bootentry --select`, GRUB's `boot_once`) is
honoured and does not count as a try.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kairos.bootloader import grubenv

ENV_FILE = "/boot_assessment"  # on COS_STATE
DEFAULT_TRIES = 3
MAX_TRIES = 9  # GRUB has no arithmetic: the countdown is an if-chain over single digits
REASON_MAX = 240  # the whole block is 1024 bytes
# Kernel command line words the menu adds during a trial and after a fallback.
TRIAL_WORD = "kairos.assessment"  # =trying (active on trial) or =fallback (passive on trial)
FAILURE_WORD = "kairos.upgrade_failure"


class Phase(StrEnum):
    NONE = ""
    TRYING = "trying"
    FAILED = "failed"
    FELLBACK = "fellback"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class Assessment:
    phase: Phase = Phase.NONE
    tries: int = 0
    fallback_tries: int = 0
    version: str = ""  # the version under trial (or that failed)
    previous: str = ""  # the version it replaced
    reason: str = ""
    armed: str = ""
    result: str = ""  # the outcome of the last trial, for the report

    @property
    def fell_back(self) -> bool:
        return self.phase in (Phase.FAILED, Phase.FELLBACK, Phase.RECOVERY)

    def to_dict(self) -> dict[str, object]:
        return {
            "state": str(self.phase) or "none",
            "tries_left": self.tries,
            "version": self.version,
            "previous_version": self.previous,
            "reason": self.reason,
            "armed": self.armed,
            "last_result": self.result,
        }


def path_in(state_dir: Path) -> Path:
    return state_dir / ENV_FILE.lstrip("/")


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def read(state_dir: Path) -> Assessment:
    env = grubenv.read(path_in(state_dir))
    try:
        phase = Phase(env.get("ba_state", ""))
    except ValueError:
        phase = Phase.NONE
    return Assessment(
        phase=phase,
        tries=_int(env.get("ba_tries", "")),
        fallback_tries=_int(env.get("ba_fallback_tries", "")),
        version=env.get("ba_version", ""),
        previous=env.get("ba_previous", ""),
        reason=env.get("ba_reason", ""),
        armed=env.get("ba_armed", ""),
        result=env.get("ba_result", ""),
    )


def _write(state_dir: Path, a: Assessment) -> None:
    env = {
        "ba_state": str(a.phase),
        "ba_tries": str(a.tries),
        "ba_fallback_tries": str(a.fallback_tries),
        "ba_version": a.version,
        "ba_previous": a.previous,
        "ba_reason": a.reason[:REASON_MAX],
        "ba_armed": a.armed,
        "ba_result": a.result[:REASON_MAX],
    }
    # Every variable is written, even when empty: a reader sees the whole state, and GRUB's
    # save_env (which rewrites the block in place) only ever changes two short values.
    grubenv.write(path_in(state_dir), env)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clamp_tries(tries: int) -> int:
    return max(1, min(MAX_TRIES, tries))


def arm(state_dir: Path, version: str, previous: str, tries: int = DEFAULT_TRIES) -> Assessment:
    """Put a freshly written active image on trial; everything of earlier trials is dropped."""
    n = clamp_tries(tries)
    a = Assessment(
        phase=Phase.TRYING,
        tries=n,
        fallback_tries=n,
        version=version,
        previous=previous,
        armed=_now(),
    )
    _write(state_dir, a)
    return a


def clear(state_dir: Path) -> None:
    """Nothing on trial and no fallback recorded (after install and reset)."""
    _write(state_dir, Assessment(result=f"cleared {_now()}"))


def record_good(state_dir: Path, running_version: str) -> Assessment:
    """The health point was reached: end the trial in favour of the system that booted."""
    a = read(state_dir)
    if a.phase is Phase.TRYING:
        if a.version and running_version and running_version != a.version:
            # A power cut between arming and the role switch: the old system booted.
            result = (
                f"upgrade to {a.version} was interrupted before the switch; "
                f"{running_version} still active ({_now()})"
            )
        else:
            result = f"{a.version or running_version} booted and passed its checks ({_now()})"
        new = Assessment(result=result)
    elif a.phase is Phase.FAILED:
        new = Assessment(
            phase=Phase.FELLBACK,
            version=a.version,
            previous=a.previous,
            reason=a.reason or no_report_reason(a),
            armed=a.armed,
            result=f"fell back to {running_version or 'passive'} ({_now()})",
        )
    else:
        return a
    _write(state_dir, new)
    return new


def record_failure(state_dir: Path, reason: str) -> Assessment:
    """The health point failed: no more tries for this system; the next boot moves on."""
    a = read(state_dir)
    if a.phase not in (Phase.TRYING, Phase.FAILED):
        return a
    new = Assessment(
        phase=a.phase,
        tries=0,
        fallback_tries=a.fallback_tries,
        version=a.version,
        previous=a.previous,
        reason=reason,
        armed=a.armed,
        result=a.result,
    )
    _write(state_dir, new)
    return new


def note_boot_failure(state_dir: Path, what: str) -> Assessment:
    """Why a trial boot of the new active system failed before the health point (immucore
    found no init, could not mount the image...). The try is already spent (GRUB counted it
    down); only the reason is kept, for the report after the fallback."""
    a = read(state_dir)
    if a.phase is not Phase.TRYING:
        return a
    new = dataclasses.replace(a, reason=f"{a.version or 'the new system'} failed to boot: {what}")
    _write(state_dir, new)
    return new


def no_report_reason(a: Assessment) -> str:
    return (
        f"{a.version or 'the new system'} did not reach the health point in "
        f"{a.fallback_tries or 'its'} tries (kernel panic, missing init, hang or power loss)"
    )


# --- the GRUB side ---------------------------------------------------------------------------


def _countdown(var: str, indent: str) -> list[str]:
    lines = []
    for n in range(MAX_TRIES, 0, -1):
        kw = "if" if n == MAX_TRIES else "elif"
        lines.append(f'{indent}{kw} [ "${{{var}}}" = "{n}" ]; then set {var}={n - 1}')
    lines.append(f"{indent}else set {var}=0; fi")
    return lines


def render_grub() -> list[str]:
    """The menu lines that run the trial; they come after the default entry is chosen."""
    env = f'"(${{ba_blk}}){ENV_FILE}"'
    save = f"save_env -f {env} ba_state ba_tries"
    return [
        f"# Boot assessment: after an upgrade the new system is on trial (COS_STATE:{ENV_FILE}).",
        "# Tries are counted down before each trial boot; a boot that never reaches the health",
        "# point has used its try. An explicit one-shot choice (boot_once) is left alone.",
        f"search --no-floppy --file --set=ba_blk {ENV_FILE}",
        'if [ -n "${ba_blk}" ]; then',
        '  if [ "${boot_once}" != "true" ]; then',
        f"    load_env -f {env} ba_state ba_tries ba_fallback_tries",
        '    if [ "${ba_state}" = "trying" ]; then',
        '      if [ "${ba_tries}" = "0" ]; then',
        "        set ba_state=failed",
        '        set ba_tries="${ba_fallback_tries}"',
        "      fi",
        "    fi",
        '    if [ "${ba_state}" = "trying" ]; then',
        *_countdown("ba_tries", "      "),
        f"      {save}",
        "      set default=cos",
        f'      set extra_active_cmdline="${{extra_active_cmdline}} {TRIAL_WORD}=trying"',
        '    elif [ "${ba_state}" = "failed" ]; then',
        '      if [ "${ba_tries}" = "0" ]; then',
        "        set ba_state=recovery",
        f"        {save}",
        "        set default=recovery",
        f'        set extra_recovery_cmdline="${{extra_recovery_cmdline}} {FAILURE_WORD}"',
        "      else",
        *_countdown("ba_tries", "        "),
        f"        {save}",
        "        set default=fallback",
        "        set extra_passive_cmdline="
        f'"${{extra_passive_cmdline}} {FAILURE_WORD} {TRIAL_WORD}=fallback"',
        "      fi",
        '    elif [ "${ba_state}" = "fellback" ]; then',
        "      set default=fallback",
        f'      set extra_passive_cmdline="${{extra_passive_cmdline}} {FAILURE_WORD}"',
        '    elif [ "${ba_state}" = "recovery" ]; then',
        "      set default=recovery",
        f'      set extra_recovery_cmdline="${{extra_recovery_cmdline}} {FAILURE_WORD}"',
        "    fi",
        "  fi",
        "fi",
    ]
