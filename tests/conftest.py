"""Fixtures shared by the boot-tier modules: one rendered, installed and running project per broker, per session."""

from collections.abc import Iterator

import pytest
from booted import BootedProject, Proc, running_project
from template import CHOICES


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep what shares an installed project on one xdist worker (`make test` runs `-n 2 --dist loadgroup`).

    Every boot project is pip-installed into this one environment under a fixed name, so two workers must never set
    up the same fixture: tests on the session `booted` project go together per broker, and the other boot tests per
    module (their module-scoped stacks). Fast tests carry no group and fill the gaps.
    """
    for item in items:
        if item.get_closest_marker("boot") is None:
            continue
        if "booted" in item.fixturenames:
            params = getattr(item, "callspec", None)
            broker = params.params.get("booted", "redis") if params else "redis"
            group = f"booted-{broker}"
        else:
            group = item.path.name
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def booted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    """Real servers and one worker per queue started through the generated bin/worker."""
    broker = request.param
    # A distinct name per variant, so both can be installed into the one shared environment.
    with running_project(tmp_path_factory.mktemp(f"boot-{broker}"), f"Boot {broker}", broker) as project:
        yield project


@pytest.fixture
def stopped_afterwards() -> Iterator[list[Proc]]:
    """Processes a test starts and appends here; all stopped by process group afterwards, whatever happened."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.stop(timeout=30)
