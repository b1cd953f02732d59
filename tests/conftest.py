"""Fixtures shared by the boot-tier modules: one rendered, installed and running project per broker, per session."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from booted import BootedProject, Proc, running_project
from template import CHOICES


@pytest.fixture(scope="session", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def booted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    """Real servers and one worker per queue started through the generated bin/worker."""
    broker = request.param
    # A distinct name per variant, so both can be installed into the one shared environment.
    # A distinct name per pytest process too (make test runs several): each installs and boots its own.
    name = f"Boot {broker} {os.environ.get('PYTEST_XDIST_WORKER', '')}".strip()
    with running_project(tmp_path_factory.mktemp(f"boot-{broker}"), name, broker) as project:
        yield project


@pytest.fixture
def stopped_afterwards() -> Iterator[list[Proc]]:
    """Processes a test starts and appends here; all stopped by process group afterwards, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(timeout=30)


BOOT_DIR = Path(__file__).parent / "boot"


# The modules that take longest (summed test time in a full run on 2 cores), longest first. `make test` hands whole
# modules to its pytest processes in collection order (--dist loadscope --no-loadscope-reorder): started first, the
# long ones do not end up alone at the end while the other processes sit idle. The rest follow in their usual order.
LONGEST_FIRST = (
    "boot/test_bench_smoke.py",
    "boot/test_ci_workflow.py",
    "boot/test_doctor.py",
    "boot/test_tls.py",
    "fast/test_k8s.py",
    "boot/test_delivery.py",
    "boot/test_faults.py",
    "boot/test_beat.py",
    "boot/test_k8s_pods.py",
    "boot/test_ops.py",
    "boot/test_liveness.py",
    "boot/test_supervisor.py",
    "boot/test_compose.py",
    "fast/test_render.py",
    "boot/test_isolation.py",
)


def _rank(item: pytest.Item) -> int:
    name = item.path.relative_to(Path(__file__).parent).as_posix()
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


# Last, after pytest has grouped the tests by their parametrized fixtures: the sort is stable, so within a module
# that order holds.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The folder is the tier: every test under tests/boot/ is a boot test, so `-m "not boot"` never starts a server."""
    for item in items:
        if BOOT_DIR in item.path.parents:
            item.add_marker(pytest.mark.boot)
    items.sort(key=_rank)
