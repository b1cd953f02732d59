"""Routing rules, checked without a broker: every example task goes to a declared queue, typos fail loudly."""

import pytest
from kombu.exceptions import OperationalError

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.queues import PROFILES, TASK_ROUTES
from {{ cookiecutter.__package }}.config.settings import settings
{%- set queues = cookiecutter.__queues.split(',') %}
{%- set q_high = queues[1] if queues | length > 1 else queues[0] %}
{%- set q_low = queues[2] if queues | length > 2 else q_high %}


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


# Every example task and its queue, written out rather than read from TASK_ROUTES, so a wrong entry in the table fails
# here. A new task: add it with the queue it must reach.
EXPECTED_ROUTES = {
    "{{ cookiecutter.__package }}.tasks.orders.process_order": "{{ queues[0] }}",
    "{{ cookiecutter.__package }}.tasks.workflows.convert_order": "{{ queues[0] }}",
    "{{ cookiecutter.__package }}.tasks.workflows.summarize": "{{ queues[0] }}",
    "{{ cookiecutter.__package }}.tasks.workflows.settlement_failed": "{{ queues[0] }}",
    "{{ cookiecutter.__package }}.tasks.maintenance.report_dead_letters": "{{ queues[0] }}",
    "{{ cookiecutter.__package }}.tasks.notifications.send_receipt": "{{ q_high }}",
    "{{ cookiecutter.__package }}.tasks.prices.fetch_price": "{{ q_low }}",
    "{{ cookiecutter.__package }}.tasks.catalog.import_catalog": "{{ q_low }}",
    "{{ cookiecutter.__package }}.tasks.rates.fetch_rate": "{{ q_low }}",
}


def test_every_example_task_reaches_its_queue() -> None:
    app.loader.import_default_modules()
    ours = {name for name in app.tasks if name.startswith("{{ cookiecutter.__package }}.")}
    assert EXPECTED_ROUTES.keys() <= ours, "an example task is no longer registered"
    assert {name: route_of(name) for name in EXPECTED_ROUTES} == EXPECTED_ROUTES
    # A task added since (README "Add a task") needs no line here: the test above checks its queue is declared.


def test_every_route_in_the_table_is_pinned() -> None:
    # A module added to TASK_ROUTES gets its tasks pinned above too.
    modules = {pattern.removesuffix(".*") for pattern in TASK_ROUTES}
    assert modules == {name.rsplit(".", 1)[0] for name in EXPECTED_ROUTES}


def test_unrouted_task_goes_to_the_default_queue() -> None:
    assert route_of("some.other.task") == settings.queues[0]


def test_undeclared_queue_is_refused() -> None:
    # task_create_missing_queues=False: a typo'd queue raises instead of creating a queue nobody consumes.
    with pytest.raises((KeyError, OperationalError)):
        app.send_task("x", queue="no-such-queue")
