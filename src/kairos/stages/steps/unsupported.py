"""Step keys upstream has and we accept but do not apply yet: a clear warning, never a crash."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kairos.context import Context
from kairos.stages.model import Step

if TYPE_CHECKING:
    from kairos.stages.steps import StepType

log = logging.getLogger("kairos.stages")


def step_type(key: str) -> StepType:
    from kairos.stages.steps import StepType

    def apply(step: Step, ctx: Context) -> None:
        log.warning("%s: %s: '%s' is not supported yet, skipped.", step.where, step.op_name, key)

    return StepType(key, (key,), apply, supported=False)
