"""`ops deadletters`: list, count and replay the dead letters (the store: runtime/deadletters.py)."""

import sys
from typing import Any

import click

from ..runtime import deadletters as store


@click.group(help="list | count | replay TASK_ID | replay --all")
@click.pass_context
def deadletters(ctx: click.Context) -> None:
    # After an upgrade: the old list's entries show up (and are bounded) from the first command.
    store.migrate_legacy()


@deadletters.command("list", help="print every dead letter, oldest first")
def list_entries() -> None:
    for entry in store.entries():
        queue = entry["queue"] or "?"
        note = f"  [not replayable: {entry['not_replayable']}]" if entry.get("not_replayable") else ""
        print(f"{entry['failed_at']}  {entry['key']}  {entry['task']}  queue={queue}  {entry['reason']}{note}")
    for entry in store.stranded():
        print(
            f"{entry['failed_at']}  {entry['key']}  {entry['task']}  STRANDED: a replay claimed it at "
            f"{entry['replaying_since']} and never finished; it may have been sent. Check, then `replay KEY`"
        )


@deadletters.command(help="print how many dead letters there are")
def count() -> None:
    print(store.count())
    if stuck := len(store.stranded()):
        print(f"{stuck} more stranded mid-replay (see list)", file=sys.stderr)


# A task id replays its newest failure; a KEY (task id@suffix, as list prints) that one entry.
@deadletters.command(help="send dead-lettered tasks again")
@click.argument("task_id", required=False, metavar="TASK_ID_OR_KEY")
@click.option("--all", "replay_every", is_flag=True, help="every entry there is now")
@click.pass_obj
def replay(obj: Any, task_id: str | None, replay_every: bool) -> None:
    if not replay_every and not task_id:
        raise click.UsageError("replay needs a TASK_ID (or an entry KEY, as list prints it) or --all")
    if replay_every:
        click.get_current_context().exit(1 if store.replay_all(obj.app) else 0)
    try:
        print(f"replayed {task_id} as {store.replay(obj.app, str(task_id))}")  # str: not None, checked above
    except (KeyError, ValueError) as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        click.get_current_context().exit(1)
