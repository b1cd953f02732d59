"""The worker liveness check against heartbeat files written here: what it accepts, refuses and says."""

import os
import subprocess
import sys
import time

import pytest

from {{ cookiecutter.__package }}.heartbeat import RUNNING, WAITING_FOR_BROKER, read_heartbeat, touch


def health(heartbeat, **env: str) -> subprocess.CompletedProcess:
    """`health worker` as the liveness probe runs it, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.__package }}.health", "worker"],
        env={**os.environ, "WORKER_HEARTBEAT_FILE": str(heartbeat), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_touch_writes_time_and_state(tmp_path) -> None:
    touch(tmp_path / "hb", WAITING_FOR_BROKER)
    age, state = read_heartbeat(tmp_path / "hb")
    assert -1 < age < 5 and state == WAITING_FOR_BROKER  # the stamp is rounded to the millisecond
    assert not (tmp_path / "hb.tmp").exists(), "written through a temporary file, renamed over the heartbeat"


def test_a_worker_waiting_for_its_broker_is_live(tmp_path) -> None:
    touch(tmp_path / "hb", WAITING_FOR_BROKER)
    check = health(tmp_path / "hb")
    assert check.returncode == 0 and "waiting for the broker" in check.stderr


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
