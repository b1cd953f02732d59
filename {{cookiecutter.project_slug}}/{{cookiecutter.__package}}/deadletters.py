"""Dead letters: tasks that failed for good (bad payload, retries exhausted), kept with what is needed to replay them.

Every task inherits `DeadLetterTask` (set as the app's task class), so a final failure is recorded in a Redis list
instead of only in a log line that rotates away. Operators use:

    python -m {{ cookiecutter.__package }}.deadletters list
    python -m {{ cookiecutter.__package }}.deadletters replay TASK_ID   # or --all
{%- if cookiecutter.broker == "rabbitmq" %}

RabbitMQ also dead-letters messages natively (queue "<name>.dead", see queues.py): those are messages the broker gave
up on (delivered too many times), not failed task runs.
{%- endif %}
"""

import argparse
import json
import sys
import time
from typing import Any

from .guards import GuardedTask
from .redis_store import client, key

TRACEBACK_LINES = 8  # enough to see where it failed without storing whole stack dumps


def _dead_letter_key() -> str:
    return key("deadletters")


def record(
    task_id: str, task_name: str, args: Any, kwargs: Any, reason: str, traceback: str = "", queue: str = ""
) -> dict:
    entry = {
        "id": task_id,
        "task": task_name,
        "args": list(args or ()),
        "kwargs": dict(kwargs or {}),
        "queue": queue,
        "reason": reason,
        "traceback": "\n".join(traceback.strip().splitlines()[-TRACEBACK_LINES:]),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # RPUSH keeps arrival order; nothing trims the list: a dead letter is removed only by replaying it.
    client().rpush(_dead_letter_key(), json.dumps(entry, default=str))
    return entry


def entries() -> list[dict]:
    return [json.loads(raw) for raw in client().lrange(_dead_letter_key(), 0, -1)]


def replay(task_id: str) -> str:
    """Send the task again (routed as usual) and remove its dead letter. Returns the new task id."""
    from .celery_app import app  # imported here: recording a dead letter must not need the app

    for raw in client().lrange(_dead_letter_key(), 0, -1):
        entry = json.loads(raw)
        if entry["id"] == task_id:
            result = app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"])
            # Removed only after the broker accepted the new message, so a failed replay loses nothing.
            client().lrem(_dead_letter_key(), 1, raw)
            return result.id
    raise KeyError(f"no dead letter with id {task_id!r}")


# GuardedTask (guards.py): refuses oversized payloads when publishing and in the worker.
class DeadLetterTask(GuardedTask):
    """Base class of every task: records a final failure. Retries in progress are not failures yet."""

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        queue = (self.request.delivery_info or {}).get("routing_key", "")
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        record(task_id, self.name, args, kwargs, reason, str(getattr(einfo, "traceback", "")), queue)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.__package }}.deadletters")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every dead letter, oldest first")
    replay_cmd = commands.add_parser("replay", help="send dead-lettered tasks again")
    replay_cmd.add_argument("task_id", nargs="?")
    replay_cmd.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "list":
        for entry in entries():
            queue = entry["queue"] or "?"
            print(f"{entry['failed_at']}  {entry['id']}  {entry['task']}  queue={queue}  {entry['reason']}")
        return 0
    if not args.all and not args.task_id:
        parser.error("replay needs a TASK_ID or --all")
    ids = [entry["id"] for entry in entries()] if args.all else [args.task_id]
    for task_id in ids:
        try:
            print(f"replayed {task_id} as {replay(task_id)}")
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
