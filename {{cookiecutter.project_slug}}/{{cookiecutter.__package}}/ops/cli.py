"""Operator commands for a running cluster: one command line, `ops`, with subcommands (RUNBOOK.md says when to
use which). From a checkout or an image (no installation needed):

    python -m {{ cookiecutter.__package }}.ops queues       # ready messages per declared queue
    python -m {{ cookiecutter.__package }}.ops workers      # who answers: pool, concurrency, prefetch
    python -m {{ cookiecutter.__package }}.ops active       # also: reserved, scheduled, registered
    python -m {{ cookiecutter.__package }}.ops purge QUEUE  # asks you to type the name; --yes skips
    python -m {{ cookiecutter.__package }}.ops deadletters list   # or: count, replay TASK_ID, replay --all
    python -m {{ cookiecutter.__package }}.ops beat list    # the schedule in Redis; also: beat run NAME
{%- if cookiecutter.broker == "redis" %}
    python -m {{ cookiecutter.__package }}.ops migrate-keys  # once, from the unprefixed layout
{%- endif %}

Exit 0 when all is well, 1 with a one-line reason on stderr. The worker commands broadcast through the broker and
wait --timeout seconds (default 2) for replies: fine for a person, too costly for a probe (use health.py there).
The app comes from click's context (__main__.py passes it), so the project's tests run the commands against theirs.
"""

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from celery import Celery
from celery.bin.base import CLIContext
from celery.result import AsyncResult

from ..runtime.broker_stats import connect, declared_queues, queue_depths
{%- if cookiecutter.broker == "redis" %}
from ..runtime.key_migration import migrate
{%- endif %}
from .beat import beat
from .deadletters import deadletters
from .doctor import doctor
from .purge import purge_queue

DEFAULT_TIMEOUT = 2.0


class Problem(click.ClickException):
    """Something the operator must look at: printed as one line, exit status 1."""

    def show(self, file: Any = None) -> None:
        print(f"error: {self.message}", file=sys.stderr)


TIMEOUT = click.option(
    "--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True, help="seconds to wait for worker replies"
)


@click.group(help="Operator commands for this project's cluster (RUNBOOK.md).")
def ops() -> None:
    pass


ops.add_command(beat)
ops.add_command(deadletters)
ops.add_command(doctor)


def _check_broker(app: Celery[Any]) -> None:
    try:
        connect(app).release()
    except Exception as exc:  # any transport error means the same thing to the operator
        url = app.connection_for_read().as_uri()  # as_uri() masks the password
        raise Problem(f"cannot reach the broker at {url}: {type(exc).__name__}: {exc}") from None


def _replies(app: Celery[Any], method: str, timeout: float, destination: list[str] | None = None) -> dict[str, Any]:
    """Replies to a broadcast inspect command, by worker name; a Problem when none came."""
    _check_broker(app)
    replies = getattr(app.control.inspect(timeout=timeout, destination=destination), method)() or {}
    if not replies:
        raise Problem(f"no workers replied within {timeout}s (are they running, on this broker?)")
    return dict(sorted(replies.items()))


@ops.command(help="messages ready per declared queue, read from the broker")
@click.pass_obj
def queues(obj: Any) -> None:
    app = obj.app
    try:
        depths = queue_depths(app)
    except Exception as exc:  # same one-line report as the other commands
        _check_broker(app)
        raise Problem(f"cannot read queue depths: {type(exc).__name__}: {exc}") from None
    width = max(len(name) for name in depths)
    print(f"{'queue':<{width}}  ready")
    for name, count in depths.items():
        print(f"{name:<{width}}  {count:>5}")


@ops.command(help="ping workers; pool, concurrency, prefetch, processed")
@TIMEOUT
@click.pass_obj
def workers(obj: Any, timeout: float) -> None:
    app = obj.app
    names = list(_replies(app, "ping", timeout))
    stats = app.control.inspect(timeout=timeout, destination=names).stats() or {}
    for name in names:
        info = stats.get(name)
        if not info:
            print(f"{name}  ok (no stats reply within {timeout}s)")
            continue
        pool = info.get("pool", {})
        # "celery.concurrency.prefork:TaskPool" -> "prefork"
        kind = str(pool.get("implementation", "?")).rsplit(".", 1)[-1].split(":")[0]
        processed = sum(info.get("total", {}).values())
        print(
            f"{name}  ok  pool={kind} concurrency={pool.get('max-concurrency', '?')} "
            f"prefetch={info.get('prefetch_count', '?')} processed={processed} uptime={info.get('uptime', '?')}s"
        )


def _task_line(request: dict[str, Any], extra: str = "") -> str:
    queue = (request.get("delivery_info") or {}).get("routing_key", "?")
    return f"  {request.get('id')}  {request.get('name')}  queue={queue}{extra}  args={request.get('args')}"


def _print_tasks(replies: dict[str, list[Any]], what: str, line: Callable[[Any], str]) -> None:
    for worker, items in replies.items():
        print(f"{worker}: {len(items)} {what}")
        for item in items:
            print(line(item))


def _progress(app: Celery[Any], request: dict[str, Any]) -> str:
    """A long task's own report (tasks/catalog.py: state PROGRESS), read from the result backend."""
    result: AsyncResult[Any] = AsyncResult(str(request.get("id")), app=app)
    state: str = result.state  # str: a task's own states (PROGRESS) are outside Celery's built-in ones
    if state != "PROGRESS" or not isinstance(result.info, dict):
        return ""
    return f"  {result.info.get('percent')}% {result.info.get('message', '')}".rstrip()


@ops.command(help="tasks running now, per worker (with the progress of those that report it)")
@TIMEOUT
@click.pass_obj
def active(obj: Any, timeout: float) -> None:
    app = obj.app

    def line(request: dict[str, Any]) -> str:
        started = request.get("time_start")
        running = f"  running {time.time() - started:.0f}s" if started else ""
        return _task_line(request, running + _progress(app, request))

    _print_tasks(_replies(app, "active", timeout), "active", line)


@ops.command(help="tasks prefetched by workers, not started yet")
@TIMEOUT
@click.pass_obj
def reserved(obj: Any, timeout: float) -> None:
    app = obj.app
    _print_tasks(_replies(app, "reserved", timeout), "reserved (prefetched, not started)", _task_line)


@ops.command(help="tasks held by workers for their countdown/ETA")
@TIMEOUT
@click.pass_obj
def scheduled(obj: Any, timeout: float) -> None:
    app = obj.app

    def line(entry: dict[str, Any]) -> str:
        return _task_line(entry.get("request", {}), f"  eta={entry.get('eta')}")

    _print_tasks(_replies(app, "scheduled", timeout), "scheduled (countdown/ETA, held by the worker)", line)


@ops.command(help="task names each worker knows")
@TIMEOUT
@click.pass_obj
def registered(obj: Any, timeout: float) -> None:
    app = obj.app
    _print_tasks(_replies(app, "registered", timeout), "registered tasks", lambda name: f"  {name}")


@ops.command(help="delete the ready messages of one declared queue")
@click.argument("queue")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@click.pass_obj
def purge(obj: Any, queue: str, yes: bool) -> None:
    app = obj.app
    declared = declared_queues(app)
    if queue not in declared:
        raise Problem(f"{queue!r} is not a declared queue; declared: {', '.join(declared)}")
    _check_broker(app)
    if not yes:
        ready = queue_depths(app, [queue])[queue]
        prompt = f"{ready} message(s) ready in {queue!r}; type the queue name to delete them: "
        try:
            answer = input(prompt)
        except EOFError:  # no terminal (a script): refuse rather than guess
            answer = ""
        if answer.strip() != queue:
            raise Problem("not confirmed; nothing purged (pass --yes in scripts)")
    removed = purge_queue(app, queue)
    # Reserved and scheduled messages belong to workers until acknowledged: a purge does not reach them.
    print(f"purged {removed} message(s) from {queue!r}")


{%- if cookiecutter.broker == "redis" %}


@ops.command("migrate-keys", help="move messages of the unprefixed key layout under CELERY_KEY_PREFIX (RUNBOOK.md)")
@click.option("--dry-run", is_flag=True, help="print what would move, change nothing")
@click.pass_obj
def migrate_keys(obj: Any, dry_run: bool) -> None:
    app = obj.app
    _check_broker(app)
    with connect(app) as connection:
        # The stubs type default_channel as the abstract StdChannel; with the Redis broker it is the Redis channel.
        lines = migrate(app, connection.default_channel, dry_run=dry_run)  # type: ignore[arg-type]
    for line in lines:
        print(line)
    if not lines:
        print("nothing to migrate: no unprefixed queue lists, bindings or unacked messages of the declared queues")
{%- endif %}


def main(app: Celery[Any], argv: list[str] | None = None) -> int:
    """Run the command line against `app` and return its exit status (`python -m`, and the project's tests)."""
    context = CLIContext(app=app, no_color=True, workdir=None)
    try:
        # Not standalone: click returns the status of ctx.exit(...) instead of calling sys.exit itself.
        status = ops.main(args=argv, prog_name=f"python -m {__package__}", obj=context, standalone_mode=False)
    except click.ClickException as exc:  # Problem, and usage errors (exit status 2, as argparse had it)
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    return status if isinstance(status, int) else 0
