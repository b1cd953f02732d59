"""doctor's rules on plain data (every check_* reads a Facts), and its gathering on fakeredis for the Redis parts."""

import importlib.util
import json
import re

import pytest
from click.testing import CliRunner

from {{ cookiecutter.__package }}.ops import doctor
from {{ cookiecutter.__package }}.ops.doctor import FAIL, OK, WARN, Facts, WorkerFacts
from {{ cookiecutter.__package }}.runtime import control, deadletters

PKG = "{{ cookiecutter.__package }}"


def worker(queues: list[str], **changes: object) -> WorkerFacts:
    fields: dict = {
        "queues": queues,
        "pool": "prefork",
        "concurrency": 1,
        "prefetch_count": 1,
        "registered": {f"{PKG}.tasks.orders.process_order", f"{PKG}.tasks.prices.fetch_price"},
        "task_events": False,
    }
    return WorkerFacts(**{**fields, **changes})


def healthy(**changes: object) -> Facts:
    facts = Facts(
        broker_url="redis://localhost:6379/0",
        redis_errors={"redis://localhost:6379/0 (results, beat)": None},
        queues=["default", "low"],
        profiles={"default": 4, "low": 1},
        eta_task_limit=16,
        workers={"default@h": worker(["default"], prefetch_count=4), "low@h": worker(["low"])},
        routes={f"{PKG}.tasks.orders.process_order": "default", f"{PKG}.tasks.prices.fetch_price": "low"},
        depths={"default": 0, "low": 0},
        beat_lock_key="x:redbeat::lock",
        beat_lock_ttl=24.0,
        beat_lock_timeout=25,
        beat_loop_interval=5.0,
        visibility_timeout=9000,
        visibility_needed=8760,
        lock_timeout_min=25.0,
    )
    for name, value in changes.items():
        setattr(facts, name, value)
    return facts


def statuses(facts: Facts) -> dict[str, str]:
    return {row.name: row.status for row in doctor.diagnose(facts)}


def failing(facts: Facts) -> list[str]:
    return [row.name for row in doctor.diagnose(facts) if row.status == FAIL]


def test_a_healthy_deployment_is_all_ok() -> None:
    assert set(statuses(healthy()).values()) == {OK}


def test_settings_that_do_not_load_are_the_only_line() -> None:
    rows = doctor.diagnose(Facts(settings_error="CELERY_VISIBILITY_TIMEOUT (60) must be at least 8760"))
    assert [(row.name, row.status) for row in rows] == [("settings", FAIL)]
    assert "CELERY_VISIBILITY_TIMEOUT" in rows[0].saw


def test_an_unreachable_broker_is_one_fail_line_naming_it() -> None:
    rows = doctor.diagnose(healthy(broker_error="ConnectionRefusedError: [Errno 111]"))
    assert [(row.name, row.status) for row in rows] == [("broker", FAIL)]
    assert "redis://localhost:6379/0 unreachable" in rows[0].saw and "Broker unreachable" in rows[0].fix


def test_broker_tls_off_verification_is_a_warning() -> None:
    assert statuses(healthy(broker_tls="unverified"))["broker"] == WARN
    assert statuses(healthy(broker_tls="none", environment="production"))["broker"] == WARN
    assert statuses(healthy(broker_tls="verified", environment="production"))["broker"] == OK


def test_an_unreachable_redis_fails() -> None:
    facts = healthy(redis_errors={"redis://r:6379/0 (results)": "ConnectionError: refused"})
    assert failing(facts) == ["redis"]


def test_no_worker_answering_fails_workers_only() -> None:
    facts = healthy(workers={})
    assert failing(facts) == ["workers"]
    assert statuses(facts)["consumers"] == WARN


def test_a_queue_without_consumer_fails_with_its_depth() -> None:
    facts = healthy(workers={"default@h": worker(["default"], prefetch_count=4)}, depths={"default": 0, "low": 7})
    rows = {row.name: row for row in doctor.diagnose(facts)}
    assert failing(facts) == ["consumers"]
    assert "'low' (7 ready)" in rows["consumers"].saw and "WORKER_QUEUES=low" in rows["consumers"].fix


def test_a_worker_off_its_queue_profile_is_a_warning() -> None:
    facts = healthy(workers={"default@h": worker(["default"], prefetch_count=1), "low@h": worker(["low"])})
    rows = {row.name: row for row in doctor.diagnose(facts)}
    assert rows["profiles"].status == WARN and "gives 4 x 1 = 4" in rows["profiles"].saw
    # Held countdown tasks raise the prefetch, up to worker_eta_task_limit: still the profile.
    held = healthy(workers={"default@h": worker(["default"], prefetch_count=10), "low@h": worker(["low"])})
    assert statuses(held)["profiles"] == OK
    override = healthy(prefetch_override=1, workers={"default@h": worker(["default"]), "low@h": worker(["low"])})
    assert statuses(override)["profiles"] == OK


def test_task_events_turned_on_at_run_time_fail() -> None:
    facts = healthy(
        workers={"default@h": worker(["default"], prefetch_count=4, task_events=True), "low@h": worker(["low"])}
    )
    rows = {row.name: row for row in doctor.diagnose(facts)}
    assert failing(facts) == ["events"]
    assert "default@h" in rows["events"].saw and "disable_events" in rows["events"].fix
    facts.events_setting = True  # chosen in settings: reported, not a fault
    assert statuses(facts)["events"] == OK


def test_a_worker_lacking_a_routed_task_fails_registration() -> None:
    lacking = worker(["default"], prefetch_count=4, registered={f"{PKG}.tasks.prices.fetch_price"})
    facts = healthy(workers={"default@h": lacking, "low@h": worker(["low"])})
    rows = {row.name: row for row in doctor.diagnose(facts)}
    assert failing(facts) == ["registration"]
    assert f"default@h lacks {PKG}.tasks.orders.process_order" in rows["registration"].saw


def test_unregistered_names_in_dead_letters_warn() -> None:
    facts = healthy(not_registered=["old.task"], dead_letters=1, dead_letter_reasons=["NotRegistered x1"])
    assert statuses(facts)["registration"] == WARN
    assert statuses(facts)["deadletters"] == WARN
    assert failing(facts) == []


def test_a_queue_growing_under_its_workers_warns() -> None:
    facts = healthy(depths={"default": 9, "low": 0}, last_depths={"default": 3, "low": 0})
    assert statuses(facts)["queues"] == WARN
    assert statuses(healthy(depths={"default": 3, "low": 0}, last_depths={"default": 9}))["queues"] == OK


def test_beat_without_lock_fails_and_overdue_entries_fail() -> None:
    assert failing(healthy(beat_lock_ttl=None)) == ["beat"]
    assert failing(healthy(beat_overdue={"refresh-eurusd": 120.0})) == ["beat"]
    assert statuses(healthy(beat_lock_ttl=5.0))["beat"] == WARN  # renewed 20 s ago: over three loop intervals


def test_dead_letters_report_growth_and_reasons() -> None:
    facts = healthy(dead_letters=5, last_dead_letters=2, dead_letter_reasons=["InvalidPayload x4", "Boom x1"])
    row = next(row for row in doctor.diagnose(facts) if row.name == "deadletters")
    assert row.status == WARN and "5 waiting, +3 since the last run" in row.saw and "InvalidPayload x4" in row.saw


def test_visibility_timeout_below_the_rule_fails_config() -> None:
    assert failing(healthy(visibility_timeout=60)) == ["config"]
    assert failing(healthy(beat_lock_timeout=10, beat_lock_ttl=9.0)) == ["config"]
    assert failing(healthy(visibility_timeout=None, consumer_timeout=1800, consumer_timeout_needed=1500)) == []
    assert failing(healthy(visibility_timeout=None, consumer_timeout=600, consumer_timeout_needed=1500)) == ["config"]


def test_running_tasks_show_their_progress() -> None:
    task = {"id": "t1", "name": f"{PKG}.tasks.catalog.import_catalog"}
    facts = healthy(
        workers={"default@h": worker(["default"], prefetch_count=4), "low@h": worker(["low"], active=[task])},
        progress={"t1": {"percent": 40, "message": "step 2 of 5"}},
    )
    row = next(row for row in doctor.diagnose(facts) if row.name == "running")
    assert row.status == OK and "on low@h 40% step 2 of 5" in row.saw


def test_dead_letter_facts_come_from_the_store(fake_redis: object) -> None:
    deadletters.record("t1", "gone.task", [], {}, "NotRegistered: no task named 'gone.task' on this worker")
    deadletters.record("t2", f"{PKG}.tasks.orders.process_order", [], {}, "InvalidPayload: amount")
    facts = Facts()
    doctor._dead_letter_facts(facts)
    assert facts.dead_letters == 2 and facts.not_registered == ["gone.task"]
    assert sorted(facts.dead_letter_reasons) == ["InvalidPayload x1", "NotRegistered x1"]


def test_the_command_prints_one_line_per_check_and_exits_1_on_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor, "gather", lambda timeout, connect_timeout: healthy(beat_lock_ttl=None))
    result = CliRunner().invoke(doctor.doctor, [])
    lines = result.output.splitlines()
    assert result.exit_code == 1
    assert len(lines) == len(doctor.CHECKS) + 1 and lines[-1].startswith("doctor: 11 OK, 0 WARN, 1 FAIL")
    assert [line.split()[0] for line in lines[:-1]].count(FAIL) == 1
    result = CliRunner().invoke(doctor.doctor, ["--json"])
    rows = json.loads(result.output)["rows"]
    assert {row["name"]: row["status"] for row in rows}["beat"] == FAIL


def test_the_worker_probe_reads_the_event_dispatcher() -> None:
    class Dispatcher:
        enabled, groups = True, {"worker"}

    class State:
        class consumer:  # the worker's consumer attribute
            event_dispatcher = Dispatcher()

    assert control.doctor_probe(State()) == {"task_events": False}
    Dispatcher.groups = {"worker", "task"}
    assert control.doctor_probe(State()) == {"task_events": True}


def test_every_command_a_fix_names_exists() -> None:
    """The fixes are copied into a terminal at 3 a.m.: every module they name must import."""
    broken = healthy(
        workers={"default@h": worker(["default"], prefetch_count=4, task_events=True)},
        dead_letters=3,
        dead_letter_reasons=["NotRegistered x3"],
        not_registered=["gone.task"],
        beat_lock_ttl=None,
    )
    fixes = " ".join(row.fix for row in doctor.diagnose(broken) if row.status != OK)
    named = re.findall(r"(?:python -m|--app) ([\w.]+)", fixes)
    assert named, fixes
    for module in named:
        assert importlib.util.find_spec(module) is not None, f"a fix names {module}, which does not exist: {fixes}"
