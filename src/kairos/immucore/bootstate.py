"""Boot-state detection from the kernel command line (upstream immucore's DAG selection).

Pure functions over the cmdline text, so the same rules are tested on the host and used in
the initramfs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    LIVE = "live"
    RAM = "ram"
    UKI = "uki"
    NORMAL = "normal"


# Any of these words makes immucore stand aside: live media boots through dracut alone.
_LIVE_WORDS = ("rd.cos.disable", "rd.immucore.disable", "netboot")
_LIVE_ROOTS = ("live:LABEL", "live:CDLABEL", "live:http", "live:https", "live:ftp", "live:nfs")


@dataclass(frozen=True)
class Cmdline:
    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Cmdline:
        try:
            return cls(tuple(shlex.split(text)))
        except ValueError:  # an unbalanced quote: fall back to plain words
            return cls(tuple(text.split()))

    def has(self, word: str) -> bool:
        return any(w == word or w.startswith(word + "=") for w in self.words)

    def value(self, key: str) -> str | None:
        found = None
        for w in self.words:
            name, sep, val = w.partition("=")
            if sep and name == key:
                found = val  # the last one wins, as in the kernel
        return found


def mode(cmdline: Cmdline) -> Mode:
    """Which path immucore takes (same precedence as upstream's root command)."""
    if any(w.startswith("kairos.ram") for w in cmdline.words):
        return Mode.RAM
    root = cmdline.value("root") or ""
    if any(cmdline.has(w) for w in _LIVE_WORDS) or root.startswith(_LIVE_ROOTS):
        return Mode.LIVE
    if cmdline.has("rd.immucore.uki"):
        return Mode.UKI
    return Mode.NORMAL


def sentinels(cmdline: Cmdline) -> tuple[str, ...]:
    """The `/run/cos/` marker files this boot gets (upstream sdk/state rules)."""
    if mode(cmdline) is Mode.LIVE:
        return ("live_mode",)
    if cmdline.has("kairos.reset"):
        return ("autoreset_mode",)
    root = cmdline.value("root") or ""
    text = " ".join(cmdline.words)
    if "COS_ACTIVE" in root or cmdline.has("kairos.ram"):
        return ("active_mode",)
    if "COS_PASSIVE" in root:
        return ("passive_mode",)
    if any(x in text for x in ("COS_RECOVERY", "COS_SYSTEM", "recovery-mode")):
        return ("recovery_mode",)
    return ("unknown",)
