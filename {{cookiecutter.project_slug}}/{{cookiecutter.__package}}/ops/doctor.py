"""`ops doctor`: RUNBOOK.md's diagnosis as one command. It connects to the running deployment with the same settings
as the processes and prints one line per check: OK / WARN / FAIL, what it saw, and the fix (a RUNBOOK section or a
command). Exit 1 on any FAIL.

    python -m {{ cookiecutter.__package }}.ops doctor            # one line per check
    python -m {{ cookiecutter.__package }}.ops doctor --json     # the same rows for machines
    python -m {{ cookiecutter.__package }}.ops.doctor            # also when the settings refuse to load

Two halves, kept apart so every rule is tested on plain data (tests/test_doctor.py): `gather()` asks the broker,
the workers and Redis and fills a `Facts`; the `check_*` functions read only a `Facts` and return a `Row`.
The project's modules are imported inside `gather()` and its helpers, not at the top: settings that refuse to load
are then doctor's first FAIL line instead of a traceback.

The broker comes first and bounds the rest: unreachable, doctor prints that one line and stops (nothing else can be
asked). Workers are asked with one broadcast that waits --timeout seconds for replies; every later question names
the workers that answered and returns as soon as they all have. Whether a worker sends task events now comes from
`doctor_probe`, an inspect command the workers register (runtime/control.py).
"""

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import click
import redis
from celery.result import AsyncResult
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url
from pydantic import ValidationError

OK, WARN, FAIL = "OK", "WARN", "FAIL"
RUNBOOK = "RUNBOOK.md"
# Inspect replies: the first broadcast waits this long for workers to answer (a person waits; probes use health.py).
DEFAULT_TIMEOUT = 1.0
# One connection attempt to the broker or a Redis: doctor must fail fast when they are down, not retry.
DEFAULT_CONNECT_TIMEOUT = 3.0
# How many of the newest dead letters the reasons are counted from.
REASONS_SAMPLE = 200
# How many dead-letter reasons the dead-letter line names.
TOP_REASONS = 3
# How long doctor's own notes (last dead-letter count, last queue depths) are kept in Redis for the next run.
MEMORY_TTL = 7 * 86_400
# The package this project runs ({{ cookiecutter.__package }}): task names and commands start with it.
PACKAGE = __package__.rsplit(".", 1)[0]
REPLAY = f"python -m {PACKAGE}.ops deadletters replay --all"


@dataclass
class Row:
    name: str
    status: str  # OK | WARN | FAIL
    saw: str
    fix: str = ""


@dataclass
class WorkerFacts:
    queues: list[str]
    pool: str  # prefork | threads | ...
    concurrency: int
    prefetch_count: int
    registered: set[str]
    task_events: bool | None  # None: the worker does not answer doctor_probe (an older deployment)
    active: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Facts:
    """Everything the checks read; gather() fills it from the live deployment, tests fill it by hand."""

    environment: str = "development"
    settings_error: str | None = None  # the settings refused to load: nothing else was asked
    broker_url: str = ""  # password masked
    broker_error: str | None = None
    broker_latency: float = 0.0  # seconds, one connect + round trip
    broker_tls: str = "none"  # none | verified | unverified
    redis_errors: dict[str, str | None] = field(default_factory=dict)  # "results (redis://...)" -> error or None
    queues: list[str] = field(default_factory=list)
    profiles: dict[str, int] = field(default_factory=dict)  # queue -> prefetch multiplier (queues.py)
    prefetch_override: int | None = None  # CELERY_WORKER_PREFETCH_MULTIPLIER
    eta_task_limit: int = 0
    events_setting: bool = False  # CELERY_WORKER_SEND_TASK_EVENTS
    workers: dict[str, WorkerFacts] = field(default_factory=dict)
    worker_timeout: float = DEFAULT_TIMEOUT
    routes: dict[str, str] = field(default_factory=dict)  # task name -> queue, for every task the project defines
    depths: dict[str, int] = field(default_factory=dict)
    last_depths: dict[str, int] = field(default_factory=dict)  # at doctor's previous run
    beat_lock_key: str = ""
    beat_lock_ttl: float | None = None  # seconds left; None: nobody holds the lock
    beat_lock_timeout: float = 0.0
    beat_loop_interval: float = 0.0
    beat_overdue: dict[str, float] = field(default_factory=dict)  # entry -> seconds late beyond its interval
    dead_letters: int = 0
    last_dead_letters: int | None = None
    dead_letter_reasons: list[str] = field(default_factory=list)
    not_registered: list[str] = field(default_factory=list)  # task names dead-lettered as NotRegistered
    visibility_timeout: int | None = None  # redis broker only
    visibility_needed: int = 0  # settings.longest_unacknowledged(max_countdown) + margin
    consumer_timeout: int | None = None  # RabbitMQ broker only: CELERY_CONSUMER_TIMEOUT
    consumer_timeout_needed: int = 0  # settings.longest_unacknowledged(1)
    lock_timeout_min: float = 0.0  # 5 x beat_max_loop_interval
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # running task id -> PROGRESS meta


# --- the rules: Facts in, one Row out ---------------------------------------------------------------------------


def check_settings(f: Facts) -> Row:
    if f.settings_error:
        return Row("settings", FAIL, f.settings_error, f"{RUNBOOK} 'Diagnose with doctor': fix the variable named")
    return Row("settings", OK, f"loaded ({f.environment})")


def check_broker(f: Facts) -> Row:
    if f.broker_error:
        return Row("broker", FAIL, f"{f.broker_url} unreachable: {f.broker_error}", f"{RUNBOOK} 'Broker unreachable'")
    saw = f"{f.broker_url} answered in {f.broker_latency * 1000:.0f} ms, TLS {f.broker_tls}"
    if f.broker_tls == "unverified":
        return Row("broker", WARN, saw, "unset CELERY_SSL_INSECURE_SKIP_VERIFY and give CELERY_SSL_CA_CERTS")
    if f.broker_tls == "none" and f.environment != "development":
        return Row("broker", WARN, saw, "use rediss:// or amqps:// outside development (README, TLS)")
    return Row("broker", OK, saw)


def check_redis(f: Facts) -> Row:
    down = {role: error for role, error in f.redis_errors.items() if error}
    if down:
        saw = "; ".join(f"{role} unreachable: {error}" for role, error in down.items())
        return Row("redis", FAIL, saw, f"{RUNBOOK} 'Broker unreachable' (the same steps for Redis)")
    return Row("redis", OK, f"{', '.join(f.redis_errors)} answer")


def check_workers(f: Facts) -> Row:
    if not f.workers:
        return Row(
            "workers",
            FAIL,
            f"no worker answered within {f.worker_timeout:g}s",
            f"{RUNBOOK} 'Worker not consuming'; start one: WORKER_QUEUES=<queue> bin/worker",
        )
    saw = ", ".join(f"{name} ({','.join(w.queues)})" for name, w in sorted(f.workers.items()))
    return Row("workers", OK, f"{len(f.workers)} answer: {saw}")


def check_consumers(f: Facts) -> Row:
    if not f.workers:
        return Row("consumers", WARN, "no worker answered (see workers)")
    consumed = {queue for worker in f.workers.values() for queue in worker.queues}
    missing = [queue for queue in f.queues if queue not in consumed]
    if missing:
        saw = ", ".join(f"{queue!r} ({f.depths.get(queue, '?')} ready)" for queue in missing)
        return Row(
            "consumers",
            FAIL,
            f"no worker consumes {saw}",
            f"{RUNBOOK} 'Worker not consuming'; start one: WORKER_QUEUES={missing[0]} bin/worker",
        )
    return Row("consumers", OK, f"every declared queue has a consumer ({', '.join(f.queues)})")


def expected_prefetch(f: Facts, queues: list[str]) -> int | None:
    """The prefetch multiplier a worker of these queues should run with (worker_steps.QueuePrefetchStep's rule)."""
    if f.prefetch_override is not None:
        return f.prefetch_override
    known = [f.profiles[queue] for queue in queues if queue in f.profiles]
    return min(known) if known else None


def check_profiles(f: Facts) -> Row:
    problems, seen = [], []
    for name, worker in sorted(f.workers.items()):
        multiplier = expected_prefetch(f, worker.queues)
        seen.append(f"{name} {worker.pool}x{worker.concurrency} prefetch={worker.prefetch_count}")
        if worker.pool == "solo":
            problems.append(f"{name} runs the solo pool (refused by bin/worker)")
        if multiplier is None:
            continue
        base = multiplier * worker.concurrency
        # Celery raises a worker's prefetch by one per countdown/ETA task it holds, up to worker_eta_task_limit.
        if not base <= worker.prefetch_count <= base + f.eta_task_limit:
            problems.append(
                f"{name} prefetches {worker.prefetch_count}, its queues' profile gives {multiplier} x "
                f"{worker.concurrency} = {base}"
            )
    if problems:
        return Row("profiles", WARN, "; ".join(problems), "queues.py PROFILES; restart the worker with bin/worker")
    return Row("profiles", OK, "; ".join(seen) or "no workers")


def check_events(f: Facts) -> Row:
    on = sorted(name for name, worker in f.workers.items() if worker.task_events)
    unknown = sorted(name for name, worker in f.workers.items() if worker.task_events is None)
    if on and not f.events_setting:
        return Row(
            "events",
            FAIL,
            f"task events on at {', '.join(on)} while CELERY_WORKER_SEND_TASK_EVENTS is off: turned on at run time "
            "(`celery control enable_events`, or Flower with FLOWER_ENABLE_EVENTS)",
            f"celery --app {PACKAGE}.celery_app control disable_events",
        )
    if unknown:
        return Row("events", WARN, f"{', '.join(unknown)} do not answer doctor_probe (older code)", "redeploy them")
    if on:
        return Row("events", OK, f"task events on at {', '.join(on)} (CELERY_WORKER_SEND_TASK_EVENTS=true)")
    return Row("events", OK, "task events off on every worker")


def check_registration(f: Facts) -> Row:
    missing = []
    for name, worker in sorted(f.workers.items()):
        lacking = sorted(
            task for task, queue in f.routes.items() if queue in worker.queues and task not in worker.registered
        )
        if lacking:
            missing.append(f"{name} lacks {', '.join(lacking)}")
    if missing:
        return Row(
            "registration",
            FAIL,
            "; ".join(missing),
            f"restart the worker from the current code (every task module imported), then `{REPLAY}`",
        )
    if f.not_registered:
        return Row(
            "registration",
            WARN,
            f"dead letters for unregistered tasks: {', '.join(sorted(set(f.not_registered)))}",
            f"deploy the module that defines them, then `{REPLAY}`",
        )
    return Row("registration", OK, f"{len(f.routes)} routed tasks registered on the workers of their queues")


def check_queues(f: Facts) -> Row:
    saw = ", ".join(f"{queue}={depth}" for queue, depth in f.depths.items())
    consumed = {queue for worker in f.workers.values() for queue in worker.queues}
    # A queue without a consumer is the consumers line's FAIL; here only queues whose workers fall behind.
    growing = [
        queue
        for queue, depth in f.depths.items()
        if queue in consumed and depth > 0 and depth > f.last_depths.get(queue, depth)
    ]
    if growing:
        return Row(
            "queues",
            WARN,
            f"ready: {saw}; growing since the last run: {', '.join(growing)}",
            f"{RUNBOOK} 'Tasks stuck'; add workers to those queues",
        )
    return Row("queues", OK, f"ready: {saw}")


def check_beat(f: Facts) -> Row:
    if f.beat_lock_ttl is None:
        return Row(
            "beat",
            FAIL,
            f"no beat holds the lock {f.beat_lock_key}",
            f"{RUNBOOK} 'Beat not firing'; start one: bin/beat",
        )
    since = f.beat_lock_timeout - f.beat_lock_ttl
    if f.beat_overdue:
        late = ", ".join(f"{name} {seconds:.0f}s late" for name, seconds in sorted(f.beat_overdue.items()))
        return Row(
            "beat", FAIL, f"lock renewed {since:.0f}s ago, but entries overdue: {late}", f"{RUNBOOK} 'Beat not firing'"
        )
    # health.py's rule: renewals more than three loop intervals apart mean a stuck beat.
    if since > 3 * f.beat_loop_interval:
        return Row(
            "beat",
            WARN,
            f"lock last renewed {since:.0f}s ago (loop interval {f.beat_loop_interval:g}s)",
            f"{RUNBOOK} 'Beat not firing'",
        )
    return Row("beat", OK, f"lock held, renewed {since:.0f}s ago; no entry overdue")


def check_dead_letters(f: Facts) -> Row:
    if not f.dead_letters:
        return Row("deadletters", OK, "none")
    growth = "" if f.last_dead_letters is None else f", {f.dead_letters - f.last_dead_letters:+d} since the last run"
    reasons = "; ".join(f.dead_letter_reasons[:TOP_REASONS])
    return Row(
        "deadletters",
        WARN,
        f"{f.dead_letters} waiting{growth}; top reasons: {reasons}",
        f"python -m {PACKAGE}.ops deadletters list, then replay",
    )


def check_config(f: Facts) -> Row:
    problems = []
    if f.visibility_timeout is not None and f.visibility_timeout < f.visibility_needed:
        problems.append(
            f"CELERY_VISIBILITY_TIMEOUT {f.visibility_timeout}s is below {f.visibility_needed}s (max countdown + "
            "held tasks x time limit + margin): Redis hands waiting or running tasks out again"
        )
    if f.consumer_timeout is not None and f.consumer_timeout <= f.consumer_timeout_needed:
        problems.append(
            f"CELERY_CONSUMER_TIMEOUT {f.consumer_timeout}s is not above {f.consumer_timeout_needed}s (held runs x "
            "time limit): RabbitMQ closes the worker's channel and the task runs twice"
        )
    if f.beat_lock_timeout < f.lock_timeout_min:
        problems.append(f"CELERY_REDBEAT_LOCK_TIMEOUT {f.beat_lock_timeout:g}s is below 5 loop intervals")
    if problems:
        return Row("config", FAIL, "; ".join(problems), f"{RUNBOOK} 'Duplicated tasks'; see settings.py for each rule")
    return Row("config", OK, "timeouts follow the rules in settings.py")


def check_running(f: Facts) -> Row:
    running = [(name, task) for name, worker in sorted(f.workers.items()) for task in worker.active]
    if not running:
        return Row("running", OK, "no task running")
    shown = []
    for name, task in running:
        meta = f.progress.get(task.get("id", ""))
        progress = f" {meta.get('percent')}% {meta.get('message', '')}".rstrip() if meta else ""
        shown.append(f"{task.get('name')}[{task.get('id')}] on {name}{progress}")
    return Row("running", OK, f"{len(running)} running: {'; '.join(shown)}")


CHECKS: list[Callable[[Facts], Row]] = [
    check_broker,
    check_redis,
    check_workers,
    check_consumers,
    check_profiles,
    check_events,
    check_registration,
    check_queues,
    check_beat,
    check_dead_letters,
    check_config,
    check_running,
]


def diagnose(f: Facts) -> list[Row]:
    """The rows in order. Settings that do not load, or a broker that does not answer: that one line, nothing else."""
    if f.settings_error:
        return [check_settings(f)]
    first = check_broker(f)
    if first.status == FAIL:
        return [first]
    return [first, *(check(f) for check in CHECKS[1:])]


# --- gathering the facts: the only part that talks to the deployment --------------------------------------------


def _settings_error() -> str | None:

    try:
        from ..config.settings import settings  # noqa: F401  (read at import)
    except ValidationError as exc:
        return "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
    return None


def _masked(url: str | None) -> str:

    return str(maybe_sanitize_url(url or ""))


def _redis_error(url: str, connect_timeout: float) -> str | None:

    from ..config.settings import settings

    tls = settings.redis_ssl(url) or {}
    client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout, socket_timeout=connect_timeout, **tls)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
    return None


def _worker_facts(app: Any, timeout: float) -> dict[str, WorkerFacts]:
    stats = app.control.inspect(timeout=timeout).stats() or {}
    if not stats:
        return {}
    names = sorted(stats)

    def ask(method: str) -> dict[str, Any]:
        # Named destinations and a reply count: returns as soon as every worker that answered stats answers again.
        inspector = app.control.inspect(timeout=timeout, destination=names, limit=len(names))
        return inspector._request(method) or {}

    queues, registered, active, probe = (ask(m) for m in ("active_queues", "registered", "active", "doctor_probe"))
    workers = {}
    for name in names:
        info = stats[name]
        pool = info.get("pool", {})
        reply = probe.get(name)
        workers[name] = WorkerFacts(
            queues=[queue["name"] for queue in queues.get(name) or []],
            # "celery.concurrency.prefork:TaskPool" -> "prefork"
            pool=str(pool.get("implementation", "?")).rsplit(".", 1)[-1].split(":")[0],
            concurrency=int(pool.get("max-concurrency") or 0),
            prefetch_count=int(info.get("prefetch_count") or 0),
            registered=set(registered.get(name) or []),
            task_events=reply.get("task_events") if isinstance(reply, dict) and "error" not in reply else None,
            active=list(active.get(name) or []),
        )
    return workers


def _beat_facts(f: Facts, now: float) -> None:

    from ..config.schedule import beat_schedule
    from ..config.settings import settings

    tls = settings.redis_ssl(settings.redbeat_redis_url) or {}
    client = redis.Redis.from_url(settings.redbeat_redis_url, socket_timeout=DEFAULT_CONNECT_TIMEOUT, **tls)
    f.beat_lock_key = settings.redbeat_lock_key
    ttl = client.pttl(settings.redbeat_lock_key)
    f.beat_lock_ttl = ttl / 1000 if ttl >= 0 else None
    # RedBeat's sorted set: entry key -> the time it is due next. An entry due longer ago than its interval (plus the
    # loop interval beat may sleep) was skipped by a beat that holds the lock.
    # cast: this client returns bytes (no decode_responses); redis-py types every reply as bytes | str.
    scored = client.zrange(f"{settings.redbeat_key_prefix}:schedule", 0, -1, withscores=True)
    due = dict(cast("list[tuple[bytes, float]]", scored))
    for name, entry in beat_schedule().items():
        score = due.get(f"{settings.redbeat_key_prefix}{name}".encode())
        schedule = entry["schedule"]
        interval = getattr(schedule, "seconds", None) or 86_400.0  # a crontab: at most a day apart here
        if score is not None and score > 0 and now - score > interval + f.beat_loop_interval:
            f.beat_overdue[name] = now - score - interval


def _dead_letter_facts(f: Facts) -> None:
    from ..runtime import deadletters

    f.dead_letters = deadletters.count()
    if not f.dead_letters:
        return
    reasons: Counter[str] = Counter()
    # The newest only: a pile of dead letters is when doctor runs, and reading them all would take minutes and memory.
    for entry in deadletters.newest(REASONS_SAMPLE):
        reason = str(entry.get("reason", ""))
        reasons[reason.split(":")[0]] += 1
        if reason.startswith("NotRegistered"):
            f.not_registered.append(str(entry.get("task")))
    f.dead_letter_reasons = [f"{reason} x{count}" for reason, count in reasons.most_common()]


def _remember(f: Facts) -> None:
    """Keep this run's dead-letter count and queue depths for the next run's "since the last run" (one hash)."""
    from ..runtime.redis_store import client, key

    name = key("doctor", "last")
    previous = cast("dict[str, str]", client().hgetall(name))  # decode_responses=True: str replies
    if "deadletters" in previous:
        f.last_dead_letters = int(previous["deadletters"])
    f.last_depths = {k.removeprefix("depth:"): int(v) for k, v in previous.items() if k.startswith("depth:")}
    pipe = client().pipeline()
    pipe.hset(name, mapping={"deadletters": f.dead_letters, **{f"depth:{q}": d for q, d in f.depths.items()}})
    pipe.expire(name, MEMORY_TTL)
    # A read-only Redis user: doctor still reports, without "since the last run" next time.
    with contextlib.suppress(redis.ResponseError):
        pipe.execute()


def _progress(app: Any, workers: dict[str, WorkerFacts]) -> dict[str, dict[str, Any]]:

    progress: dict[str, dict[str, Any]] = {}
    for worker in workers.values():
        for task in worker.active:
            result: AsyncResult[Any] = AsyncResult(task["id"], app=app)
            state: str = result.state  # str: a task's own states (PROGRESS) are outside Celery's built-in ones
            if state == "PROGRESS" and isinstance(result.info, dict):
                progress[task["id"]] = result.info
    return progress


def gather(timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Facts:
    f = Facts(worker_timeout=timeout)
    f.settings_error = _settings_error()
    if f.settings_error:
        return f
    from ..celery_app import app  # first: it registers the Redis transport before any connection resolves it
    from ..config.settings import settings

    f.environment = settings.environment
    f.broker_url = _masked(settings.broker_url)
    started = time.monotonic()
    f.broker_error = _broker_error(connect_timeout)
    f.broker_latency = time.monotonic() - started
    if f.broker_error:
        return f  # fail fast: every other question goes through the broker or the same Redis
    tls = settings.broker_use_ssl
    f.broker_tls = "none" if not tls else "unverified" if settings.ssl_insecure_skip_verify else "verified"

    from ..config.queues import PROFILES
    from ..runtime.broker_stats import queue_depths

    roles: dict[str, list[str]] = {}  # URL -> what it holds; one ping per distinct Redis
    for role, url in (("results", settings.result_backend), ("beat", settings.redbeat_redis_url)):
        roles.setdefault(str(url), []).append(role)
    roles.setdefault(str(settings.redis_url), []).append("dead letters, idempotency")
    for url, held in roles.items():
        f.redis_errors[f"{_masked(url)} ({', '.join(held)})"] = _redis_error(url, connect_timeout)
    if any(f.redis_errors.values()):
        return f

    app.loader.import_default_modules()  # the task modules: their routes are what workers must have registered
    router = app.amqp.router
    f.routes = {
        name: router.route({}, name)["queue"].name for name in sorted(app.tasks) if name.startswith(f"{PACKAGE}.")
    }
    f.queues = list(settings.queues)
    f.profiles = {name: profile.prefetch_multiplier for name, profile in PROFILES.items()}
    f.prefetch_override = settings.worker_prefetch_multiplier
    f.eta_task_limit = settings.worker_eta_task_limit
    f.events_setting = settings.worker_send_task_events
    f.workers = _worker_facts(app, timeout)
    f.depths = queue_depths(app, f.queues)
    f.beat_lock_timeout = settings.redbeat_lock_timeout
    f.beat_loop_interval = settings.beat_max_loop_interval
    f.lock_timeout_min = 5 * settings.beat_max_loop_interval
    _beat_facts(f, time.time())
    _dead_letter_facts(f)
    _remember(f)
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        f.visibility_timeout = settings.visibility_timeout
        f.visibility_needed = settings.longest_unacknowledged(settings.max_countdown) + settings.visibility_margin
    if hasattr(settings, "consumer_timeout"):  # the RabbitMQ broker's rule (settings.py)
        f.consumer_timeout = settings.consumer_timeout
        f.consumer_timeout_needed = settings.longest_unacknowledged(countdown=1)
    f.progress = _progress(app, f.workers)
    return f


def _broker_error(connect_timeout: float) -> str | None:
    """One bounded connection attempt (health.py's broker probe with the timeout given)."""

    from ..config.settings import settings

    # kombu's Redis transport ignores connect_timeout: its socket timeouts bound the attempt (py-amqp: connect_timeout).
    redis = str(settings.broker_url).startswith(("redis://", "rediss://"))
    bounds = {"socket_connect_timeout": connect_timeout, "socket_timeout": connect_timeout} if redis else {}
    try:
        with Connection(
            settings.broker_url,
            ssl=settings.broker_use_ssl or False,
            connect_timeout=connect_timeout,
            transport_options=bounds,
        ) as connection:
            connection.ensure_connection(max_retries=0)  # one attempt: fail fast
    except Exception as exc:  # any transport error: the same line for the operator
        return f"{type(exc).__name__}: {exc}"
    return None


# --- the command ------------------------------------------------------------------------------------------------


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="print the rows as JSON")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True, help="seconds to wait for workers")
@click.option(
    "--connect-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, show_default=True, help="seconds per connection"
)
def doctor(as_json: bool, timeout: float, connect_timeout: float) -> None:
    """Check the broker, Redis, workers, queues, beat, dead letters and configuration; exit 1 on any FAIL."""
    started = time.monotonic()
    try:
        rows = diagnose(gather(timeout, connect_timeout))
    except redis.RedisError as exc:  # answered the first ping, then failed mid-way: one line, not a traceback
        saw = f"failed while doctor read it: {type(exc).__name__}: {exc}"
        rows = [Row("redis", FAIL, saw, f"{RUNBOOK} 'Broker unreachable'")]
    elapsed = time.monotonic() - started
    counts = Counter(row.status for row in rows)
    if as_json:
        click.echo(json.dumps({"rows": [asdict(row) for row in rows], "seconds": round(elapsed, 3)}))
    else:
        width = max(len(row.name) for row in rows)
        for row in rows:
            fix = f"  -> {row.fix}" if row.status != OK and row.fix else ""
            click.echo(f"{row.status:<4} {row.name:<{width}}  {row.saw}{fix}")
        click.echo(f"doctor: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL in {elapsed:.1f}s")
    sys.exit(1 if counts[FAIL] else 0)


if __name__ == "__main__":
    doctor()
