"""The console banner of a failed boot: what failed, where the log is, what happens next."""

from __future__ import annotations

import sys

WIDTH = 72


def banner(step: str, error: str, log_path: str, *, reboot: bool) -> str:
    """The text shown on every console when immucore cannot finish the boot."""
    then = (
        "The machine reboots now (rd.immucore.rebootonfailure)."
        if reboot
        else "Boot stops here: dracut's emergency handling takes over (rd.emergency=...)."
    )
    rule = "#" * WIDTH
    body = [
        "KAIROS BOOT FAILED",
        "",
        f"step:  {step}",
        f"error: {error}",
        f"log:   {log_path}",
        "",
        then,
        "Pick another boot entry (fallback or recovery) in the GRUB menu to recover.",
    ]
    lines = [rule, *(f"# {line}" for line in body), rule]
    return "\n".join(lines) + "\n"


def show(text: str) -> None:
    """Print it; immucore's units send their output to the journal and every console."""
    sys.stdout.write(text)
    sys.stdout.flush()
