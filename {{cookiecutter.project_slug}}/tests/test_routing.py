"""Routing rules, checked without a broker: every example task goes to a declared queue, typos fail loudly."""

import pytest
from kombu.exceptions import OperationalError

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.queues import PROFILES, TASK_ROUTES
from {{ cookiecutter.__package }}.settings import settings


def route_of(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def test_every_queue_has_a_profile() -> None:
    assert set(settings.queues) <= PROFILES.keys()


def test_example_tasks_are_routed_to_declared_queues() -> None:
    app.loader.import_default_modules()
    ours = [name for name in app.tasks if name.startswith("{{ cookiecutter.__package }}.")]
    assert ours, "no tasks registered"
    for name in ours:
        assert route_of(name) in settings.queues


def test_routes_match_the_table() -> None:
    expected = TASK_ROUTES["{{ cookiecutter.__package }}.tasks.orders.*"]["queue"]
    assert route_of("{{ cookiecutter.__package }}.tasks.orders.process_order") == expected


def test_unrouted_task_goes_to_the_default_queue() -> None:
    assert route_of("some.other.task") == settings.queues[0]


def test_undeclared_queue_is_refused() -> None:
    # task_create_missing_queues=False: a typo'd queue raises instead of creating a queue nobody consumes.
    with pytest.raises((KeyError, OperationalError)):
        app.send_task("x", queue="no-such-queue")
