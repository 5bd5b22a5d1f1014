"""`commands:`: each entry is one `sh -c`, chrooted into the root when it is not `/`."""

from __future__ import annotations

import logging

from kairos.context import Context
from kairos.run import run_shell
from kairos.stages.model import Step

log = logging.getLogger("kairos.stages")


def apply(step: Step, ctx: Context) -> None:
    for command in step.commands:
        result = run_shell(command, chroot=None if ctx.is_host_root else ctx.root)
        for line in (result.stdout + result.stderr).splitlines():
            log.info("%s: %s", step.op_name, line)
