"""The VM test harness: start machines that are always killed, keep their serial logs.

`start_vm(artifact, **MachineSpec fields)` starts a `kairos.vm.qemu.Machine` for the test and
kills it afterwards; `booted(request, artifact, ...)` does the same for wider-scoped fixtures.
Serial logs are kept in tests/vm/logs/<test>.serial.log, and the tail of each is attached to the
report of a failing test.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kairos.vm.qemu import Machine, MachineSpec

LOGS = Path(__file__).resolve().parent / "logs"
TAIL_LINES = 120

# The cloud-config every VM test image embeds (ISO /config.yaml). The marker is a value no
# default could produce, so `kairos-agent config get` proves this file was merged.
CONFIG_MARKER = "/dev/disk/by-id/kairos-py-vm-e2e-marker"
TEST_CLOUD_CONFIG = f"""\
#cloud-config
users:
- name: kairos
  passwd: kairos
  groups:
  - admin
install:
  device: {CONFIG_MARKER}
"""


@dataclass(frozen=True)
class Built:
    """One build of the default Debian image, shared by every VM test of the session."""

    out: Path
    iso: Path
    raw: Path
    config: Path
    seconds: float


def _build(out: Path) -> Built:
    from kairos.build.manifest import ArtifactKind
    from kairos.build.pipeline import BuildRequest, Format, build
    from kairos.log import Progress

    config = out.parent / "vm-test-config.yaml"
    config.write_text(TEST_CLOUD_CONFIG)
    start = time.monotonic()
    manifest = build(
        BuildRequest(
            source="debian:bookworm",
            output=out,
            formats=(Format.ISO, Format.RAW),
            cloud_config=config,
        ),
        Progress(),
    )
    return Built(
        out=out,
        iso=out / manifest.artifact(ArtifactKind.ISO).file,
        raw=out / manifest.artifact(ArtifactKind.RAW).file,
        config=config,
        seconds=time.monotonic() - start,
    )


@pytest.fixture(scope="session")
def kairos_build(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """iso + raw built once per session from debian:bookworm with TEST_CLOUD_CONFIG embedded.

    KAIROS_VM_BUILD_DIR=DIR builds into DIR and reuses it while DIR holds both artifacts and
    the same config (for re-running one VM test while debugging). KAIROS_VM_SHARED_BUILD=DIR
    (set by `make test`) does the same under a lock, for two pytest processes at once.
    """
    keep = os.environ.get("KAIROS_VM_BUILD_DIR")
    if keep:
        return _reuse_or_build(Path(keep))
    shared = os.environ.get("KAIROS_VM_SHARED_BUILD")
    if shared:
        # `make test` runs two pytest processes over one fresh directory: the first to get
        # here builds, the other waits for the lock and reuses the result.
        import fcntl

        with open(Path(shared) / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return _reuse_or_build(Path(shared))
    return _build(tmp_path_factory.mktemp("kairos-build") / "out")


def _reuse_or_build(keep: Path) -> Built:
    out = keep / "out"
    config = keep / "vm-test-config.yaml"
    iso, raw = out / "kairos.iso", out / "kairos.raw"
    reusable = iso.exists() and raw.exists() and config.exists()
    if reusable and config.read_text() == TEST_CLOUD_CONFIG:
        return Built(out, iso, raw, config, 0.0)
    out.mkdir(parents=True, exist_ok=True)
    return _build(out)


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
    if report.when not in ("setup", "call") or not report.failed:
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """VM tests need QEMU and its firmware; without them they are skipped, saying why."""
    from kairos.run import which

    missing = [t for t in ("qemu-system-x86_64", "qemu-img") if which(t) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {', '.join(missing)} (run 'make setup')")
    for item in items:
        if item.get_closest_marker("vm"):
            item.add_marker(skip)


# (what, seconds) figures the VM tests measured, printed at the end of the session.
TIMINGS: list[tuple[str, float]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("VM timings")
        for what, secs in TIMINGS:
            terminalreporter.write_line(f"{secs:7.1f} s  {what}")
