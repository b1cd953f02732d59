"""The worker heartbeat file: where it is, how often it is touched and how old it is. Stdlib only, so the health
check starts fast.

Why a file: `celery inspect ping` goes through the broker, so it fails during a broker outage (restarting workers
that only wait for their broker) and costs many times this check's CPU (see `make bench`). The worker's main process
touches the file from the two places its main thread is in while healthy: the event loop (consuming), and Celery's
broker reconnection loop (waiting for the broker). A stale file means the main thread is in neither: stuck.
"""

import os
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (the probe's start-up again)
if TYPE_CHECKING:
    from pathlib import Path

# Touch interval and the age at which the health check calls the worker stuck. The environment variables exist for
# tests and for hosts that want a shorter window; the stale limit must leave room for a few missed touches.
HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_STALE_AFTER = 30.0
# What the worker was doing at the last touch, written after the timestamp (the health check reports it).
RUNNING = "running"
WAITING_FOR_BROKER = "waiting-for-broker"


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{name}={raw!r} must be a positive number of seconds; unset it for the default {default:g}")
    return value


def heartbeat_interval() -> float:
    return _seconds("WORKER_HEARTBEAT_INTERVAL", HEARTBEAT_INTERVAL)


def heartbeat_stale_after() -> float:
    stale, interval = _seconds("WORKER_HEARTBEAT_STALE_AFTER", HEARTBEAT_STALE_AFTER), heartbeat_interval()
    if stale < 3 * interval:
        raise ValueError(
            f"WORKER_HEARTBEAT_STALE_AFTER ({stale:g}) must be at least 3x WORKER_HEARTBEAT_INTERVAL ({interval:g}): "
            "one late touch on a busy host must not fail the check"
        )
    return stale


def heartbeat_file() -> str:
    """One file per worker process group: several workers on a host must not share it, so it is named after the
    worker's node name (WORKER_NAME, as bin/worker uses it), or its queues.

    A plain string, and tempfile only imported when needed: the probe runs often, and those imports (with pathlib's)
    would be a large part of its start-up. Kubernetes and compose set WORKER_HEARTBEAT_FILE.
    """
    explicit = os.environ.get("WORKER_HEARTBEAT_FILE")
    if explicit:
        return explicit
    import tempfile

    name = os.environ.get("WORKER_NAME") or os.environ.get("WORKER_QUEUES", "all").replace(",", "+")
    return os.path.join(tempfile.gettempdir(), f"{{ cookiecutter.__package }}-worker-{name}.heartbeat")


def heartbeat_path() -> "Path":
    from pathlib import Path

    return Path(heartbeat_file())


def touch(path: "Path | str", state: str = RUNNING) -> None:
    """Write the time and state to a temporary file, then rename it over the heartbeat: a reader never sees it half
    written (a truncated file would read as "no heartbeat")."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(f"{path}.tmp", "w") as partial:
        partial.write(f"{time.time():.3f} {state}\n")
    os.replace(f"{path}.tmp", path)


def read_heartbeat(path: "Path | str | None" = None) -> tuple[float, str] | None:
    """(seconds since the last touch, state at that touch), or None when there is no heartbeat file."""
    try:
        with open(path or heartbeat_file()) as file:
            stamp, _, state = file.read().strip().partition(" ")
        return time.time() - float(stamp), state or RUNNING
    except (FileNotFoundError, ValueError):
        return None


def heartbeat_age(path: "Path | str | None" = None) -> float | None:
    """Seconds since the last touch, or None when there is no heartbeat file."""
    beat = read_heartbeat(path)
    return None if beat is None else beat[0]
