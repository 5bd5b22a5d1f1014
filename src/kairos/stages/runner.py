"""Run a stage: its `.before`, itself and `.after`, each as an ordered graph of steps.

Order is yip's: sources in path order, files in lexical order, steps in file order; a
step without `after:` follows the one before it, a step with `after:` follows the named
ones (`<file name|path>.<step name|index>`). Conditions are checked first (a failed one
skips the step); then each plug-in runs in the fixed order. Non-strict: an error is
reported and the run goes on; strict: the first error stops the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from kairos.context import Context
from kairos.errors import KairosError
from kairos.stages.conditions import skip_reason
from kairos.stages.model import SUB_STAGE_SUFFIXES, StageFile, Step

log = logging.getLogger("kairos.stages")


@dataclass(frozen=True)
class Op:
    step: Step
    deps: tuple[str, ...]  # op names this one waits for
    layer: int  # 1-based depth in the graph, as `--analyze` prints it

    @property
    def name(self) -> str:
        return self.step.op_name


@dataclass(frozen=True)
class Plan:
    stage: str
    ops: tuple[Op, ...] = ()
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass
class Report:
    """What a run did; `errors` holds every failure as `stage: op: plug-in: message`."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sub_stages(stage: str) -> tuple[str, ...]:
    return tuple(stage + suffix for suffix in SUB_STAGE_SUFFIXES)


def plan_stage(files: Sequence[StageFile], stage: str) -> Plan:
    """Order the steps of `stage` across all files (a stable topological sort)."""
    steps = [step for f in files for step in f.stages.get(stage, ())]
    if not steps:
        return Plan(stage)
    warnings: list[str] = []
    by_name: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        if step.op_name in by_name:
            warnings.append(f"{step.where}: step name {step.op_name!r} is used more than once")
        by_name.setdefault(step.op_name, []).append(i)
    hard: list[set[int]] = []  # `after:` names
    soft: list[set[int]] = []  # "follows the step before it"
    for i, step in enumerate(steps):
        wanted: set[int] = set()
        for name in step.after:
            if name in by_name:
                wanted.update(j for j in by_name[name] if j != i)
            else:
                warnings.append(f"{step.where}: {step.op_name}: after {name!r}: no such step")
        hard.append(wanted)
        soft.append({i - 1} if i > 0 and not step.after else set())
    order, problems = _order(steps, hard, soft, stage)
    done: set[int] = set()
    layer = [1] * len(steps)
    dep_names: list[tuple[str, ...]] = [() for _ in steps]
    for i in order:
        deps = sorted(j for j in hard[i] | soft[i] if j in done)
        layer[i] = 1 + max((layer[j] for j in deps), default=0)
        dep_names[i] = tuple(dict.fromkeys(steps[j].op_name for j in deps))
        done.add(i)
    ops = tuple(Op(steps[i], dep_names[i], layer[i]) for i in order)
    return Plan(stage, ops, tuple(problems), tuple(warnings))


def _order(
    steps: Sequence[Step], hard: list[set[int]], soft: list[set[int]], stage: str
) -> tuple[list[int], list[str]]:
    """A stable topological order: file order, except that `after:` makes a step wait.

    "Follows the step before it" is honoured unless it contradicts an `after:` (a step
    waiting for a later one would otherwise deadlock everything behind it); only cycles
    made of `after:` names are errors, and their steps do not run.
    """
    order: list[int] = []
    done: set[int] = set()
    pending = set(range(len(steps)))
    while pending:
        ready = [i for i in pending if hard[i] <= done and soft[i] <= done]
        if not ready:
            ready = [i for i in pending if hard[i] <= done]
        if not ready:
            names = ", ".join(steps[i].op_name for i in sorted(pending))
            return order, [f"stage {stage}: `after:` cycle between {names}; those steps do not run"]
        pick = min(ready)
        order.append(pick)
        done.add(pick)
        pending.discard(pick)
    return order, []


def _wanted(step: Step) -> list[str]:
    from kairos.stages.steps import plugins

    return [p.name for p in plugins() if p.wanted(step)]


def describe(plan: Plan, ctx: Context) -> list[str]:
    """The `--analyze` text of one sub-stage: layers of ops, what each would do, and why not."""
    if not plan.ops and not plan.problems:
        return [f"{plan.stage}: nothing to run"]
    lines = [f"{plan.stage}:"]
    current = 0
    for op in plan.ops:
        if op.layer != current:
            current = op.layer
            lines.append(f" {current}.")
        step = op.step
        parts = []
        for name in _wanted(step):
            parts.append(name if name not in step.unsupported else f"{name} (not supported yet)")
        line = f"  <{op.name}> {', '.join(parts) or 'no actions'}"
        if op.deps:
            line += f" (after: {', '.join(op.deps)})"
        conds = step.conditions.describe()
        if conds:
            line += f" [if {'; '.join(conds)}]"
        if step.problems:
            line += " (invalid: not run)"
        else:
            try:
                reason = skip_reason(step.conditions, ctx, run_if=False)
            except ValueError as exc:
                reason = str(exc)
            if reason:
                line += f" (skipped: {reason})"
        lines.append(line)
    lines.extend(f" problem: {p}" for p in plan.problems)
    lines.extend(f" warning: {w}" for w in plan.warnings)
    return lines


def analyze(ctx: Context, stage: str, files: Sequence[StageFile]) -> tuple[list[str], list[str]]:
    """(text lines, problems) for `run-stage --analyze`: nothing is run or written."""
    lines: list[str] = []
    problems = [p for f in files for p in f.problems]
    for f in files:
        lines.extend(f"warning: {w}" for w in f.warnings)
    for sub in sub_stages(stage):
        plan = plan_stage(files, sub)
        problems.extend(plan.problems)
        lines.extend(describe(plan, ctx))
    lines.extend(f"problem: {p}" for p in problems)
    return lines, problems


def _fail(report: Report, strict: bool, message: str) -> None:
    report.errors.append(message)
    log.error("%s", message)
    if strict:
        raise KairosError(f"{message.rstrip('.')}.", hint="strict mode stops at the first error")


def apply_step(ctx: Context, stage: str, step: Step, report: Report, strict: bool) -> None:
    """Conditions, then every wanted plug-in in order; errors go to the report."""
    from kairos.stages.steps import plugins

    if step.problems:
        log.info("%s: %s not run: it has problems (reported above)", stage, step.op_name)
        report.skipped.append(step.op_name)
        return
    try:
        reason = skip_reason(step.conditions, ctx)
    except (ValueError, KairosError) as exc:
        _fail(report, strict, f"{stage}: {step.op_name}: condition: {exc}")
        return
    if reason:
        log.info("%s: %s skipped: %s", stage, step.op_name, reason)
        report.skipped.append(step.op_name)
        return
    log.info("%s: running %s", stage, step.op_name)
    for plugin in plugins():
        if not plugin.wanted(step):
            continue
        try:
            plugin.apply(step, ctx)
        except (KairosError, OSError) as exc:
            text = exc.message if isinstance(exc, KairosError) else str(exc)
            _fail(report, strict, f"{stage}: {step.op_name}: {plugin.name}: {text}")
        except Exception as exc:
            if strict:
                raise
            # A bug in one plug-in must not stop the node's boot: keep the traceback, go on.
            log.exception("%s: %s: %s: unexpected error", stage, step.op_name, plugin.name)
            report.errors.append(f"{stage}: {step.op_name}: {plugin.name}: unexpected: {exc!r}")
    report.ran.append(step.op_name)


def preflight(
    ctx: Context, stage: str, files: Sequence[StageFile]
) -> tuple[list[Plan], list[str], list[str]]:
    """Plans for the three sub-stages, with every problem and warning found before running.

    Under `--strict-validation` warnings (unknown keys, dangling `after:`) count as problems.
    """
    plans = [plan_stage(files, sub) for sub in sub_stages(stage)]
    in_steps = {p for f in files for st in f.stages.values() for s in st for p in s.problems}
    problems = [p for f in files for p in f.problems if p not in in_steps]
    warnings = [w for f in files for w in f.warnings]
    for plan in plans:
        problems.extend(plan.problems)
        problems.extend(p for op in plan.ops for p in op.step.problems)
        warnings.extend(plan.warnings)
    if ctx.strict:
        problems, warnings = problems + warnings, []
    return plans, problems, warnings


def run_stage(ctx: Context, stage: str, files: Sequence[StageFile], strict: bool = False) -> Report:
    """Run `stage.before`, `stage` and `stage.after` over all files.

    Strict: any problem found beforehand stops the run before a single step is applied.
    """
    from kairos.errors import ConfigError
    from kairos.log import Progress

    plans, problems, warnings = preflight(ctx, stage, files)
    if strict and problems:
        raise ConfigError(
            f"stage {stage}: {len(problems)} problem(s) in the stage files; nothing was run.",
            hint="fix them, or run without --strict to apply the valid steps",
            problems=tuple(problems),
        )
    report = Report(warnings=warnings)
    for w in warnings:
        log.warning("%s", w)
    for p in problems:
        _fail(report, False, p)
    progress = Progress(quiet=not ctx.debug)
    for plan in plans:
        if not plan.ops:
            continue
        with progress.step(f"stage {plan.stage}"):
            for op in plan.ops:
                apply_step(ctx, plan.stage, op.step, report, strict)
    return report
