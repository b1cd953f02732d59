"""Operator commands for a running cluster, one entry point (RUNBOOK.md says when to use which):

    python -m {{ cookiecutter.__package }}.ops queues       # ready messages per declared queue
    python -m {{ cookiecutter.__package }}.ops workers      # who answers: pool, concurrency, prefetch
    python -m {{ cookiecutter.__package }}.ops active       # also: reserved, scheduled, registered
    python -m {{ cookiecutter.__package }}.ops purge QUEUE  # asks you to type the name; --yes skips
    python -m {{ cookiecutter.__package }}.ops deadletters list   # or: count, replay TASK_ID, replay --all
{%- if cookiecutter.broker == "redis" %}
    python -m {{ cookiecutter.__package }}.ops migrate-keys  # once, from the unprefixed layout
{%- endif %}

Exit 0 when all is well, 1 with a one-line reason on stderr. The worker commands broadcast through the broker and
wait --timeout seconds (default 2) for replies: fine for a person, too costly for a probe (use health.py there).
"""

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from celery.result import AsyncResult

from . import deadletters
from .broker_stats import connect, declared_queues, purge, queue_depths
from .celery_app import app
{%- if cookiecutter.broker == "redis" %}
from .key_migration import migrate
{%- endif %}

DEFAULT_TIMEOUT = 2.0


class Problem(Exception):
    """Something the operator must look at: printed as one line, exit status 1."""


def _check_broker() -> None:
    try:
        connect(app).release()
    except Exception as exc:  # any transport error means the same thing to the operator
        url = app.connection_for_read().as_uri()  # as_uri() masks the password
        raise Problem(f"cannot reach the broker at {url}: {type(exc).__name__}: {exc}") from None


def _replies(method: str, timeout: float, destination: list[str] | None = None) -> dict[str, Any]:
    """Replies to a broadcast inspect command, by worker name; a Problem when none came."""
    _check_broker()
    replies = getattr(app.control.inspect(timeout=timeout, destination=destination), method)() or {}
    if not replies:
        raise Problem(f"no workers replied within {timeout}s (are they running, on this broker?)")
    return dict(sorted(replies.items()))


def cmd_queues(args: argparse.Namespace) -> None:
    try:
        depths = queue_depths(app)
    except Exception as exc:  # same one-line report as the other commands
        _check_broker()
        raise Problem(f"cannot read queue depths: {type(exc).__name__}: {exc}") from None
    width = max(len(name) for name in depths)
    print(f"{'queue':<{width}}  ready")
    for name, count in depths.items():
        print(f"{name:<{width}}  {count:>5}")


def cmd_workers(args: argparse.Namespace) -> None:
    names = list(_replies("ping", args.timeout))
    stats = app.control.inspect(timeout=args.timeout, destination=names).stats() or {}
    for name in names:
        info = stats.get(name)
        if not info:
            print(f"{name}  ok (no stats reply within {args.timeout}s)")
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


def _print_tasks(replies: dict[str, list], what: str, line: Callable[[Any], str]) -> None:
    for worker, items in replies.items():
        print(f"{worker}: {len(items)} {what}")
        for item in items:
            print(line(item))


def _progress(request: dict[str, Any]) -> str:
    """A long task's own report (tasks/reports.py: state PROGRESS), read from the result backend."""
    result = AsyncResult(str(request.get("id")), app=app)
    if result.state != "PROGRESS" or not isinstance(result.info, dict):
        return ""
    return f"  {result.info.get('percent')}% {result.info.get('message', '')}".rstrip()


def cmd_active(args: argparse.Namespace) -> None:
    def line(request: dict[str, Any]) -> str:
        started = request.get("time_start")
        return _task_line(request, (f"  running {time.time() - started:.0f}s" if started else "") + _progress(request))

    _print_tasks(_replies("active", args.timeout), "active", line)


def cmd_reserved(args: argparse.Namespace) -> None:
    _print_tasks(_replies("reserved", args.timeout), "reserved (prefetched, not started)", _task_line)


def cmd_scheduled(args: argparse.Namespace) -> None:
    def line(entry: dict[str, Any]) -> str:
        return _task_line(entry.get("request", {}), f"  eta={entry.get('eta')}")

    _print_tasks(_replies("scheduled", args.timeout), "scheduled (countdown/ETA, held by the worker)", line)


def cmd_registered(args: argparse.Namespace) -> None:
    _print_tasks(_replies("registered", args.timeout), "registered tasks", lambda name: f"  {name}")


def cmd_purge(args: argparse.Namespace) -> None:
    declared = declared_queues(app)
    if args.queue not in declared:
        raise Problem(f"{args.queue!r} is not a declared queue; declared: {', '.join(declared)}")
    _check_broker()
    if not args.yes:
        ready = queue_depths(app, [args.queue])[args.queue]
        prompt = f"{ready} message(s) ready in {args.queue!r}; type the queue name to delete them: "
        try:
            answer = input(prompt)
        except EOFError:  # no terminal (a script): refuse rather than guess
            answer = ""
        if answer.strip() != args.queue:
            raise Problem("not confirmed; nothing purged (pass --yes in scripts)")
    removed = purge(app, args.queue)
    # Reserved and scheduled messages belong to workers until acknowledged: a purge does not reach them.
    print(f"purged {removed} message(s) from {args.queue!r}")


{%- if cookiecutter.broker == "redis" %}


def cmd_migrate_keys(args: argparse.Namespace) -> None:
    _check_broker()
    with connect(app) as connection:
        lines = migrate(app, connection.default_channel, dry_run=args.dry_run)
    for line in lines:
        print(line)
    if not lines:
        print("nothing to migrate: no unprefixed queue lists, bindings or unacked messages of the declared queues")
{%- endif %}


COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "queues": cmd_queues,
    "workers": cmd_workers,
    "active": cmd_active,
    "reserved": cmd_reserved,
    "scheduled": cmd_scheduled,
    "registered": cmd_registered,
    "purge": cmd_purge,
{%- if cookiecutter.broker == "redis" %}
    "migrate-keys": cmd_migrate_keys,
{%- endif %}
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=f"python -m {__package__}.ops", description="see RUNBOOK.md")
    commands = root.add_subparsers(dest="command", required=True)
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds to wait for worker replies")
    commands.add_parser("queues", help="messages ready per declared queue, read from the broker")
    commands.add_parser("workers", parents=[waiting], help="ping workers; pool, concurrency, prefetch, processed")
    commands.add_parser("active", parents=[waiting], help="tasks running now, per worker")
    commands.add_parser("reserved", parents=[waiting], help="tasks prefetched by workers, not started yet")
    commands.add_parser("scheduled", parents=[waiting], help="tasks held by workers for their countdown/ETA")
    commands.add_parser("registered", parents=[waiting], help="task names each worker knows")
    purge_cmd = commands.add_parser("purge", help="delete the ready messages of one declared queue")
    purge_cmd.add_argument("queue")
    purge_cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
{%- if cookiecutter.broker == "redis" %}
    migrate_cmd = commands.add_parser(
        "migrate-keys", help="move messages of the unprefixed key layout under CELERY_KEY_PREFIX (RUNBOOK.md)"
    )
    migrate_cmd.add_argument("--dry-run", action="store_true", help="print what would move, change nothing")
{%- endif %}
    # Handled before parsing (main): everything after the word goes to deadletters.main unchanged.
    commands.add_parser("deadletters", add_help=False, help="list | count | replay TASK_ID | replay --all")
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["deadletters"]:
        return deadletters.main(argv[1:])
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except Problem as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
