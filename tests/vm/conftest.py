"""The VM test harness: start machines that are always killed, keep their serial logs.

`start_vm(artifact, **MachineSpec fields)` starts a `kairos.vm.qemu.Machine` for the test and
kills it afterwards; `booted(request, artifact, ...)` does the same for wider-scoped fixtures.
Serial logs are kept in tests/vm/logs/<test>.serial.log, and the tail of each is attached to the
report of a failing test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from kairos.vm.qemu import Machine, MachineSpec

LOGS = Path(__file__).resolve().parent / "logs"
TAIL_LINES = 120


def log_path(name: str) -> Path:
    return LOGS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") + ".serial.log")


@contextmanager
def booted(name: str, artifact: Path, **spec: Any) -> Iterator[Machine]:
    """A started machine whose serial log is kept under tests/vm/logs/<name>.serial.log."""
    machine = Machine(MachineSpec(artifact=Path(artifact), **spec), serial_log=log_path(name))
    with machine:
        yield machine


class VMFactory:
    """Starts machines for one test; `close()` kills them all."""

    def __init__(self, test_name: str) -> None:
        self.test_name = test_name
        self.machines: list[Machine] = []
        self._stack = ExitStack()

    def __call__(self, artifact: Path, **spec: Any) -> Machine:
        n = len(self.machines)
        name = self.test_name if n == 0 else f"{self.test_name}-{n}"
        machine = self._stack.enter_context(booted(name, artifact, **spec))
        self.machines.append(machine)
        return machine

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def start_vm(request: pytest.FixtureRequest) -> Iterator[Callable[..., Machine]]:
    factory = VMFactory(request.node.name)
    try:
        yield factory
    finally:
        factory.close()


def _machines_of(item: pytest.Item) -> list[Machine]:
    found: list[Machine] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, Machine):
            found.append(value)
        elif isinstance(value, VMFactory):
            found.extend(value.machines)
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for machine in _machines_of(item):
        if machine.plan is None:
            continue
        report.sections.append(
            (
                f"serial console ({machine.serial_log}, last {TAIL_LINES} lines)",
                machine.console_tail(TAIL_LINES),
            )
        )
