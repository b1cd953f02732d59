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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The folder is the tier: every test under tests/boot/ is a boot test, so `-m "not boot"` never starts a server."""
    for item in items:
        if BOOT_DIR in item.path.parents:
            item.add_marker(pytest.mark.boot)
