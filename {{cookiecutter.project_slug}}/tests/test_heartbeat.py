"""The worker heartbeat: the consumer's reconnection path writing it, and the health check reading it."""

import os
import socket
import subprocess
import sys
import time

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.runtime import worker_steps
from {{ cookiecutter.__package }}.runtime.heartbeat import RUNNING, WAITING_FOR_BROKER, read_heartbeat, touch
from {{ cookiecutter.__package }}.runtime.worker_steps import HeartbeatConsumer


def health(heartbeat, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`health worker` as the probes run it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.__package }}.health", "worker", *args],
        env={**os.environ, "WORKER_HEARTBEAT_FILE": str(heartbeat), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_touch_writes_time_and_state(tmp_path) -> None:
    touch(tmp_path / "hb", WAITING_FOR_BROKER)
    stamp = read_heartbeat(tmp_path / "hb")
    assert stamp is not None
    age, state = stamp
    assert -1 < age < 5 and state == WAITING_FOR_BROKER  # the stamp is rounded to the millisecond
    assert not (tmp_path / "hb.tmp").exists(), "written through a temporary file, renamed over the heartbeat"


def failing_consumer(monkeypatch: pytest.MonkeyPatch, heartbeat) -> tuple[HeartbeatConsumer, Connection, list[str]]:
    """The worker's consumer, as far as its reconnection path needs, with a broker that refuses every connection (a
    port nothing listens on), one retry (kombu sleeps 2 s before it, calling back every second), and every heartbeat
    write recorded."""
    monkeypatch.setenv("WORKER_HEARTBEAT_FILE", str(heartbeat))
    monkeypatch.setitem(app.conf, "broker_connection_max_retries", 1)
    states: list[str] = []

    def recording_touch(path, state: str = RUNNING) -> None:
        states.append(state)
        touch(path, state)

    monkeypatch.setattr(worker_steps, "touch", recording_touch)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    # Celery's Consumer.__init__ needs a whole worker; ensure_connected only reads these.
    consumer = HeartbeatConsumer.__new__(HeartbeatConsumer)
    # The stubs type Consumer.app as a Celery of plain Tasks; this app's task class is DeadLetterTask.
    consumer.app = app  # type: ignore[assignment]
    consumer.first_connection_attempt, consumer.broker_connection_retry_attempt = True, 0
    return consumer, Connection(f"redis://127.0.0.1:{port}/0"), states


def test_reconnection_loop_touches_the_heartbeat_waiting_for_broker(monkeypatch, tmp_path) -> None:
    consumer, connection, states = failing_consumer(monkeypatch, tmp_path / "hb")
    with pytest.raises(OperationalError):
        consumer.ensure_connected(connection)
    # Once on entry, then from kombu's retry callback during the 2 s before the retry: the wrapper reached kombu.
    assert len(states) >= 3 and set(states) == {WAITING_FOR_BROKER}, states
    assert consumer.heartbeat_state == WAITING_FOR_BROKER
    live, ready = health(tmp_path / "hb"), health(tmp_path / "hb", "--ready")
    assert live.returncode == 0 and "waiting for the broker" in live.stderr
    assert ready.returncode == 1 and "not connected to the broker" in ready.stderr


def test_a_heartbeat_that_cannot_be_written_does_not_end_the_reconnection(monkeypatch, tmp_path, caplog) -> None:
    (tmp_path / "file").write_text("")
    consumer, connection, _ = failing_consumer(monkeypatch, tmp_path / "file" / "hb")  # parent is not a directory
    with pytest.raises(OperationalError):  # kombu's retries ran out, not an OSError from the heartbeat
        consumer.ensure_connected(connection)
    assert "could not write the heartbeat file" in caplog.text


@pytest.mark.parametrize("state", [RUNNING, WAITING_FOR_BROKER])
def test_a_stale_heartbeat_fails_with_the_last_state(tmp_path, state: str) -> None:
    (tmp_path / "hb").write_text(f"{time.time() - 8:.3f} {state}\n")
    check = health(tmp_path / "hb", WORKER_HEARTBEAT_INTERVAL="1", WORKER_HEARTBEAT_STALE_AFTER="5")
    assert check.returncode == 1
    assert "limit 5s" in check.stderr and f"last {state}" in check.stderr and "main loop is stuck" in check.stderr


def test_the_stale_limit_comes_from_the_environment(tmp_path) -> None:
    (tmp_path / "hb").write_text(f"{time.time() - 8:.3f}\n")  # the format before the state was added still reads
    assert health(tmp_path / "hb").returncode == 0  # default limit 30 s
    assert health(tmp_path / "hb", WORKER_HEARTBEAT_STALE_AFTER="6").returncode == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORKER_HEARTBEAT_STALE_AFTER": "soon"}, "WORKER_HEARTBEAT_STALE_AFTER='soon' must be a positive number"),
        ({"WORKER_HEARTBEAT_INTERVAL": "-1"}, "WORKER_HEARTBEAT_INTERVAL='-1' must be a positive number"),
        ({"WORKER_HEARTBEAT_STALE_AFTER": "10"}, "must be at least 3x WORKER_HEARTBEAT_INTERVAL"),
    ],
)
def test_bad_windows_are_refused_with_the_variable_named(tmp_path, env: dict[str, str], message: str) -> None:
    touch(tmp_path / "hb")
    check = health(tmp_path / "hb", **env)
    assert check.returncode == 1 and message in check.stderr


def test_solo_pool_is_refused_when_celery_worker_runs_directly() -> None:
    """bin/worker refuses WORKER_POOL=solo; `celery worker -P solo` run by hand is refused too, before connecting."""
    app = "{{ cookiecutter.__package }}.celery_app"
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "--app", app, "worker", "-P", "solo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert worker.returncode != 0 and "the solo pool is refused" in worker.stderr, worker.stderr[-2000:]
{%- if cookiecutter.broker == "redis" %}


def test_broker_check_gives_up_on_an_unresponsive_redis() -> None:
    """A server that accepts connections and never answers (a blackholed Redis): `health broker`, which the start
    scripts run first, must end with its reason instead of hanging (kombu's Redis transport ignores connect_timeout)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        env = {key: value for key, value in os.environ.items() if key != "CELERY_BROKER_URL"}
        env["REDIS_URL"] = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
        result = subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.__package }}.health", "broker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,  # the failure this guards: no answer at all
        )
    assert result.returncode == 1, result.stderr
    assert "broker unreachable" in result.stderr
{%- endif %}
