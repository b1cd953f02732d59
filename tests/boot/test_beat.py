"""Boot tier for beat: real `bin/beat` processes with RedBeat against the booted project's Redis and workers.

Beat runs with short timings through the environment (the production defaults stay in settings.py):
a 1 s price refresh, a 1 s loop interval and a 5 s lock timeout (5x the loop, as the settings require).
"""

import re
import signal
import time
from datetime import datetime

import pytest
from booted import BootedProject, Proc
from services import wait_until

pytestmark = pytest.mark.boot
LOOP, LOCK = 1, 5
FAST = {
    "CELERY_PRICE_REFRESH_SECONDS": "1",
    "CELERY_BEAT_MAX_LOOP_INTERVAL": str(LOOP),
    "CELERY_REDBEAT_LOCK_TIMEOUT": str(LOCK),
}
SENT = "Sending due task refresh-eurusd"


@pytest.fixture
def beats(stopped_afterwards: list[Proc]) -> list[Proc]:
    """Beat processes started by a test; all stopped afterwards, whatever happened."""
    return stopped_afterwards


def start_beat(booted: BootedProject, beats: list[Proc], name: str, **env: str) -> Proc:
    beat = booted.start(name, ["bin/beat"], {**FAST, **env})
    beats.append(beat)
    return beat


def price_runs(booted: BootedProject, queue: str) -> int:
    # Celery's own "Task <name>[<id>] succeeded in" line, one per completed run.
    log = booted.proc(f"worker-{queue}").log.read_text(errors="replace")
    return len(re.findall(r"fetch_price\[[^\]]+\] succeeded in", log))


def price_queue(booted: BootedProject) -> str:
    return booted.program("schedule_queue", "refresh-eurusd")


def stored(booted: BootedProject) -> dict[str, str | None]:
    """Entry name -> last run, as Redis holds them (read through the project's beatctl module)."""
    return booted.program("beat_stored")


def test_beat_fires_soon_after_start_onto_the_routed_queue(booted: BootedProject, beats: list[Proc]) -> None:
    queue = price_queue(booted)
    others = {q: price_runs(booted, q) for q in booted.queues if q != queue}
    before = price_runs(booted, queue)
    started = time.time()
    beat = start_beat(booted, beats, "beat-first-fire")
    wait_until(lambda: price_runs(booted, queue) >= before + 3, what="three beat-sent price refreshes")
    first_fire = beat.stamps(SENT)[0] - started
    print(f"first fire {first_fire:.2f}s after starting bin/beat")
    assert first_fire < 10, "the first run of a new interval entry should come right after start-up"
    assert {q: price_runs(booted, q) for q in others} == others, "beat's tasks reached another queue's worker"
    health = booted.module("health", "beat", env=FAST)
    assert health.returncode == 0, health.stderr
    assert beat.stop() == 0
    # A clean stop releases the lock: the health check says so at once.
    stopped = booted.module("health", "beat", env=FAST)
    assert stopped.returncode == 1 and "no beat holds the lock" in stopped.stderr


def test_two_beats_send_each_tick_once_and_the_standby_takes_over(booted: BootedProject, beats: list[Proc]) -> None:
    queue = price_queue(booted)
    active = start_beat(booted, beats, "beat-a")
    wait_until(lambda: active.stamps(SENT), what="beat A sending")
    standby = start_beat(booted, beats, "beat-b")
    wait_until(lambda: "beat: Starting" in standby.log.read_text(), what="beat B started")
    runs_before, sends_before = price_runs(booted, queue), len(active.stamps(SENT))
    time.sleep(8)  # about eight ticks of the 1 s entry
    sends = len(active.stamps(SENT)) - sends_before
    wait_until(lambda: price_runs(booted, queue) - runs_before >= sends, what="workers catching up")
    runs = price_runs(booted, queue) - runs_before
    print(f"two beats over 8 s: beat A sent {sends}, beat B sent {len(standby.stamps(SENT))}, workers ran {runs}")
    assert standby.stamps(SENT) == [], "the standby sent while the active beat held the lock"
    assert runs == sends and sends >= 6, "every tick enqueued exactly once"

    active.popen.send_signal(signal.SIGKILL)  # crash: the lock is not released, it must expire
    killed_at = time.time()
    wait_until(lambda: standby.stamps(SENT), timeout=LOCK + LOOP + 20, what="standby taking over")
    takeover = standby.stamps(SENT)[0] - killed_at
    print(f"takeover after SIGKILL: {takeover:.2f}s (lock timeout {LOCK}s, loop interval {LOOP}s)")
    assert takeover <= LOCK + LOOP + 2


def test_restart_keeps_last_run_and_drops_removed_entries(booted: BootedProject, beats: list[Proc]) -> None:
    schedule_py = booted.path / booted.package / "config" / "schedule.py"
    original = schedule_py.read_text()
    # Hourly: it has run (now, or in an earlier test) and is not due again for an hour.
    slow = {"CELERY_PRICE_REFRESH_SECONDS": "3600"}
    try:
        first = start_beat(booted, beats, "beat-before-restart", **slow)
        wait_until(lambda: "Acquired lock" in first.log.read_text(), what="beat holding the lock")
        wait_until(lambda: stored(booted).get("refresh-eurusd"), what="refresh-eurusd has a last run")
        assert first.stop() == 0
        before = stored(booted)
        assert "dead-letter-report" in before

        # An operator deletes an entry from schedule.py and restarts beat.
        schedule_py.write_text(original + '\nENTRIES = [e for e in ENTRIES if e.name != "dead-letter-report"]\n')
        second = start_beat(booted, beats, "beat-after-restart", **slow)
        wait_until(lambda: "Acquired lock" in second.log.read_text(), what="restarted beat holding the lock")
        wait_until(lambda: "dead-letter-report" not in stored(booted), what="removed entry gone from Redis")
        time.sleep(3 * LOOP)  # a few ticks: a lost last_run_at would make the hourly entry fire again now
        after = stored(booted)
        assert after == {"refresh-eurusd": before["refresh-eurusd"]}
        assert second.stamps(SENT) == []
        assert second.stop() == 0
    finally:
        schedule_py.write_text(original)


def test_schedule_listing_and_run_now(booted: BootedProject, beats: list[Proc]) -> None:
    start_beat(booted, beats, "beat-listing", CELERY_PRICE_REFRESH_SECONDS="3600")
    wait_until(lambda: stored(booted).get("refresh-eurusd"), what="refresh-eurusd has a last run")
    listing = booted.module("ops", "beat", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    print(listing.stdout)
    assert set(rows) == {"refresh-eurusd", "dead-letter-report"}
    assert "cron 0 6 * * *" in rows["dead-letter-report"] and " 06:00:00 UTC" in rows["dead-letter-report"]
    # The hourly entry ran once: its next run is an hour after its last.
    last, following = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows["refresh-eurusd"])
    assert "every 3600s" in rows["refresh-eurusd"]
    assert abs((datetime.fromisoformat(following) - datetime.fromisoformat(last)).total_seconds() - 3600) <= 1

    report_runs = booted.proc(f"worker-{booted.queues[0]}").count("report_dead_letters[")
    run = booted.module("ops", "beat", "run", "dead-letter-report")
    assert run.returncode == 0 and "sent dead-letter-report" in run.stdout, run.stderr
    wait_until(
        lambda: booted.proc(f"worker-{booted.queues[0]}").count("report_dead_letters[") >= report_runs + 2,
        what="report task run on the default queue's worker",
    )
    unknown = booted.module("ops", "beat", "run", "no-such-entry")
    assert unknown.returncode == 1 and "no entry 'no-such-entry'" in unknown.stderr
