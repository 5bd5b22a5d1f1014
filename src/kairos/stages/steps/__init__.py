"""Step plug-ins: one uniform contract, applied in upstream yip's fixed order.

Every plug-in is a `StepType(name, keys, apply)`; `apply(step, ctx)` changes the system
under `ctx.root` or raises KairosError. The order below is data: it is yip's executor
order (pkg/executor/executor.go), which users rely on (files before commands, users before
authorized_keys, layout before packages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from kairos.context import Context
from kairos.stages.model import Step


@dataclass(frozen=True)
class StepType:
    name: str
    keys: tuple[str, ...]  # the step keys this plug-in handles
    apply: Callable[[Step, Context], None]
    supported: bool = True

    def wanted(self, step: Step) -> bool:
        """Does `step` ask anything of this plug-in?"""
        if not self.supported:
            return self.name in step.unsupported
        return any(bool(getattr(step, key)) for key in self.keys)


def plugins() -> tuple[StepType, ...]:
    """All step types, in execution order (imported here so `register` stays cheap)."""
    import kairos.stages.steps.commands as commands
    import kairos.stages.steps.entities as entities
    import kairos.stages.steps.files as files
    import kairos.stages.steps.git as git
    import kairos.stages.steps.layout as layout
    import kairos.stages.steps.packages as packages
    import kairos.stages.steps.system as system
    import kairos.stages.steps.systemctl as systemctl
    import kairos.stages.steps.unsupported as unsupported
    import kairos.stages.steps.users as users

    return (
        StepType("dns", ("dns",), files.apply_dns),
        StepType("downloads", ("downloads",), files.apply_downloads),
        StepType("git", ("git",), git.apply),
        StepType("ensure_entities", ("ensure_entities",), entities.apply_ensure),
        StepType("directories", ("directories",), files.apply_directories),
        StepType("files", ("files",), files.apply_files),
        StepType("commands", ("commands",), commands.apply),
        StepType("delete_entities", ("delete_entities",), entities.apply_delete),
        StepType("hostname", ("hostname",), system.apply_hostname),
        StepType("sysctl", ("sysctl",), system.apply_sysctl),
        StepType("users", ("users",), users.apply_users),
        StepType("authorized_keys", ("authorized_keys",), users.apply_authorized_keys),
        StepType("modules", ("modules",), system.apply_modules),
        StepType("timesyncd", ("timesyncd",), system.apply_timesyncd),
        StepType("systemctl", ("systemctl",), systemctl.apply),
        StepType("environment", ("environment",), system.apply_environment),
        StepType("systemd_firstboot", ("systemd_firstboot",), system.apply_firstboot),
        unsupported.step_type("datasource"),
        StepType("layout", ("layout",), layout.apply),
        unsupported.step_type("package_pins"),
        StepType("packages", ("packages",), packages.apply),
        unsupported.step_type("unpack_images"),
    )
