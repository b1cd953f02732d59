"""Dead letters: tasks that failed for good (bad payload, retries exhausted, a poison message), kept with what is
needed to replay them.

Every task inherits `DeadLetterTask` (tasks/base.py, the app's task class), so a final failure is recorded in Redis
instead of only in a log line that rotates away. This module is the store; operators use:

    python -m {{ cookiecutter.__package }}.ops deadletters list
    python -m {{ cookiecutter.__package }}.ops deadletters replay TASK_ID   # or KEY, or --all

Storage: a hash (entry key -> entry) and a sorted set (entry key by failure time), changed together in MULTI/EXEC. The
entry key is TASK_ID@<random suffix>: each failure its own entry, even for the same task id. Counting is ZCARD.
Replay claims an entry by moving it, in one Lua step, into the `replaying` hash (with its claim time in
`replaying-since`): of two operators replaying the same entry at once, only the one whose move found it sends the
task. After the send the entry is removed; if the send fails it is moved back. If the process dies between the two, or
Redis fails right after the send, it stays in `replaying`: listed as STRANDED after STRANDED_AFTER seconds (it may have
been sent: check), and `replay KEY` takes it back. Versions before this layout kept one LIST (`<prefix>:deadletters`):
`trim()` and every command migrate it first (migrate_legacy).

Bounded, because this Redis{% if cookiecutter.broker == "redis" %} is also the broker (a full Redis stops all publishing){% else %} also holds results and the beat schedule{% endif %}:

- at most CELERY_DEAD_LETTER_MAX_ENTRIES entries; the oldest are dropped first, with a WARNING log line;
- each entry is dropped CELERY_DEAD_LETTER_RETENTION seconds after its failure (checked on every write and by the
  daily `report_dead_letters` beat entry);
- stored arguments follow one rule: values under a key whose name contains a word of CELERY_DEAD_LETTER_REDACT_KEYS
  (at any depth, any case), and every string that looks like an e-mail address, are replaced by "[redacted]"; then,
  if the arguments are over CELERY_DEAD_LETTER_MAX_ARGS_BYTES as JSON, none are kept, only their first 200 characters
  as `args_preview`. Either way the entry says why in `not_replayable`, and `replay` refuses it: re-send that task
  from its source. The reason and traceback are not redacted (an error message can quote a value), only cut to
  REASON_CHARS and TRACEBACK_CHARS.
{%- if cookiecutter.broker == "rabbitmq" %}

RabbitMQ also dead-letters messages natively (queue "<name>.dead", see queues.py): those are messages the broker gave
up on (delivered too many times), not failed task runs.
{%- endif %}
"""

import calendar
import json
import logging
import re
import sys
import time
import uuid
from typing import Any, cast

from celery import Celery

from ..config.settings import settings
from .redis_store import client, key

logger = logging.getLogger(__name__)
TRACEBACK_LINES = 8  # enough to see where it failed without storing whole stack dumps
PREVIEW_CHARS = 200  # of arguments too large to keep: enough to tell which order or customer it was
REDACTED = "[redacted]"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# reason and traceback are not redacted (they are the error message, which may quote a value): cut to these lengths.
REASON_CHARS = 500
TRACEBACK_CHARS = 2000
# A replay claimed longer ago than this and not finished is stranded (its process died): shown by list and count.
STRANDED_AFTER = 300
# Any string that looks like an e-mail address, anywhere in the arguments (positional ones too).
EMAIL = re.compile(r"[^@\s\"<>]+@[^@\s\"<>]+\.[A-Za-z]{2,}")


def _keys() -> tuple[str, str]:
    return key("deadletters", "entries"), key("deadletters", "index")


def _replaying_keys() -> tuple[str, str]:
    # Entries claimed by a replay in progress (hash) and when each was claimed (sorted set).
    return key("deadletters", "replaying"), key("deadletters", "replaying-since")


def _legacy_key() -> str:
    # Where versions before the hash + index kept dead letters: one LIST of JSON entries, never trimmed.
    return key("deadletters")


# Moves one field, with its index entry, from one hash + sorted set to another, in one step: a replay's claim, and
# its give-back when the send fails. Lua, because the value read must be written elsewhere in the same atomic step:
# with MULTI a crash between the delete and the write would lose the entry. Returns the value, or nil if the field
# was not there (someone else moved it first: the claim).
_MOVE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], raw)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return raw
"""
# Takes over a replay claimed before ARGV[2] (stranded: the process that claimed it died or lost Redis); returns the
# value, or nil if it is not stranded (gone, or claimed more recently: someone is replaying it now).
_RECLAIM = """
local since = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not since or tonumber(since) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return redis.call('HGET', KEYS[1], ARGV[1])
"""


def _redact(value: Any, found: set[str]) -> Any:
    names = [name.lower() for name in settings.dead_letter_redact_keys]
    if isinstance(value, dict):
        redacted = {}
        for name, item in value.items():
            lowered = str(name).lower()
            if any(part in lowered for part in names):  # a substring: access_token, X-Api-Key, client_secret
                found.add(str(name))
                redacted[name] = REDACTED
            else:
                redacted[name] = _redact(item, found)
        return redacted
    if isinstance(value, list | tuple):
        return [_redact(item, found) for item in value]
    if isinstance(value, str) and EMAIL.search(value):
        found.add("an e-mail address")
        return EMAIL.sub(REDACTED, value)
    return value


def stored_arguments(args: Any, kwargs: Any) -> dict[str, Any]:
    """The arguments as a dead letter keeps them: the rule in the module docstring."""
    found: set[str] = set()
    kept = {"args": _redact(list(args or ()), found), "kwargs": _redact(dict(kwargs or {}), found)}
    fields: dict[str, Any] = dict(kept)
    if found:
        fields["not_replayable"] = f"arguments redacted ({', '.join(sorted(found))})"
    text = json.dumps([kept["args"], kept["kwargs"]], default=str)
    if len(text.encode()) > settings.dead_letter_max_args_bytes:
        fields = {
            "args": [],
            "kwargs": {},
            "args_preview": text[:PREVIEW_CHARS],
            "not_replayable": (
                f"arguments were {len(text.encode())} bytes, over CELERY_DEAD_LETTER_MAX_ARGS_BYTES "
                f"({settings.dead_letter_max_args_bytes}), and were not kept"
            ),
        }
    return fields


def record(
    task_id: str,
    task_name: str,
    args: Any,
    kwargs: Any,
    reason: str,
    traceback: str = "",
    queue: str = "",
    failed_at: float | None = None,
) -> dict[str, Any]:
    now = time.time()
    failed = now if failed_at is None else failed_at
    entry = {
        # Unique per failure: the same task id can fail more than once (a replayed chord errback, guard entries
        # with id "?"), and each failure is kept, not overwritten.
        "key": f"{task_id}@{uuid.uuid4().hex[:12]}",
        "id": task_id,
        "task": task_name,
        **stored_arguments(args, kwargs),
        "queue": queue,
        "reason": reason[:REASON_CHARS],
        "traceback": "\n".join(traceback.strip().splitlines()[-TRACEBACK_LINES:])[:TRACEBACK_CHARS],
        "failed_at": time.strftime(TIME_FORMAT, time.gmtime(failed)),
    }
    oldest, count = _store(entry, failed)
    if count > settings.dead_letter_max_entries or oldest < now - settings.dead_letter_retention:
        trim(now, migrate=False)  # not the migration: it calls record() itself
    return entry


def _store(entry: dict[str, Any], score: float) -> tuple[float, int]:
    """Write one entry (hash and index in one MULTI/EXEC); returns the oldest entry's time and the count."""
    entries, index = _keys()
    pipe = client().pipeline()  # transaction: an entry is never in the hash without its index entry, or back
    pipe.hset(entries, entry["key"], json.dumps(entry, default=str))
    pipe.zadd(index, {entry["key"]: score})
    pipe.zrange(index, 0, 0, withscores=True)
    pipe.zcard(index)
    _, _, oldest, count = pipe.execute()
    return (oldest[0][1] if oldest else score), count


def migrate_legacy(batch: int = 500) -> int:
    """Move dead letters from the LIST older versions kept (never trimmed) into the hash + index, each through
    record(), so redaction, the cap and the retention period apply; then delete the list. Returns how many."""
    db, legacy, moved = client(), _legacy_key(), 0
    if db.type(legacy) != "list":
        return 0
    while raws := db.lrange(legacy, 0, batch - 1):
        for raw in raws:
            try:
                old = json.loads(raw)
                failed_at = calendar.timegm(time.strptime(old.get("failed_at", ""), TIME_FORMAT))
            except (ValueError, TypeError, AttributeError):
                old, failed_at = (old if isinstance(old, dict) else {}), None
            record(
                str(old.get("id", "?")),
                str(old.get("task", "?")),
                old.get("args") or [],
                old.get("kwargs") or {},
                str(old.get("reason", "unknown (migrated from the old dead-letter list)")),
                str(old.get("traceback", "")),
                str(old.get("queue", "")),
                failed_at=failed_at,
            )
        db.ltrim(legacy, len(raws), -1)  # this batch is stored: drop it from the list (the list goes when empty)
        moved += len(raws)
    logger.warning("migrated %d dead letter(s) from the old list %s to the hash + index", moved, legacy)
    return moved


def trim(now: float | None = None, migrate: bool = True) -> int:
    """Drop the entries past the retention period, then the oldest over the cap. Returns how many were dropped."""
    if migrate:
        migrate_legacy()
    entries, index = _keys()
    db, now = client(), now or time.time()
    # cast: this client decodes replies (decode_responses=True), redis-py types every reply as bytes | str.
    dropped = cast("list[str]", db.zrangebyscore(index, "-inf", now - settings.dead_letter_retention))
    over = db.zcard(index) - len(dropped) - settings.dead_letter_max_entries
    if over > 0:
        dropped += cast("list[str]", db.zrange(index, len(dropped), len(dropped) + over - 1))
    replaying, since = _replaying_keys()
    abandoned = cast("list[str]", db.zrangebyscore(since, "-inf", now - settings.dead_letter_retention))  # stranded
    if dropped or abandoned:
        pipe = db.pipeline()
        if dropped:
            pipe.zrem(index, *dropped)
            pipe.hdel(entries, *dropped)
        if abandoned:
            pipe.zrem(since, *abandoned)
            pipe.hdel(replaying, *abandoned)
        pipe.execute()
        logger.warning(
            "dropped %d dead letter(s): older than CELERY_DEAD_LETTER_RETENTION (%ss) or over "
            "CELERY_DEAD_LETTER_MAX_ENTRIES (%d); oldest dropped: %s",
            len(dropped) + len(abandoned),
            settings.dead_letter_retention,
            settings.dead_letter_max_entries,
            (dropped or abandoned)[0],
        )
    return len(dropped) + len(abandoned)


def count() -> int:
    return client().zcard(_keys()[1])


def stranded(now: float | None = None) -> list[dict[str, Any]]:
    """Entries a replay claimed more than STRANDED_AFTER seconds ago and never finished (the process died, or lost
    Redis after the send): each was sent or not; `replay KEY` takes one back and sends it."""
    replaying, since = _replaying_keys()
    cutoff = (now or time.time()) - STRANDED_AFTER
    found: list[dict[str, Any]] = []
    claims = cast("list[tuple[str, float]]", client().zrangebyscore(since, "-inf", cutoff, withscores=True))
    for name, claimed in claims:
        raw = client().hget(replaying, name)
        if raw:
            found.append({**json.loads(raw), "replaying_since": time.strftime(TIME_FORMAT, time.gmtime(claimed))})
    return found


def _keys_for(id_or_key: str) -> list[str]:
    """The entry keys for an entry key (as `list` prints) or a task id (every failure of it), oldest first."""
    index = _keys()[1]
    if client().zscore(index, id_or_key) is not None:
        return [id_or_key]
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", id_or_key) + "@*"  # glob-escaped: task ids may hold * or ?
    found = dict(client().zscan_iter(index, match=pattern, count=1000))  # O(n) in Redis, rare (an operator's id)
    return sorted(found, key=lambda name: found[name])


def get(id_or_key: str) -> dict[str, Any] | None:
    """One entry by its key, or the newest for a task id."""
    names = _keys_for(id_or_key)
    raw = client().hget(_keys()[0], names[-1]) if names else None
    return json.loads(raw) if raw else None


def entries(batch: int = 500) -> list[dict[str, Any]]:
    """Every dead letter, oldest first (read in batches of HMGET)."""
    entries_key, index = _keys()
    ids, found = cast("list[str]", client().zrange(index, 0, -1)), []
    for start in range(0, len(ids), batch):
        found += [json.loads(raw) for raw in client().hmget(entries_key, ids[start : start + batch]) if raw]
    return found


def newest(limit: int) -> list[dict[str, Any]]:
    """The `limit` newest dead letters, newest first: one bounded read however many wait (ops doctor's top reasons)."""
    entries_key, index = _keys()
    ids = cast("list[str]", client().zrevrange(index, 0, limit - 1))
    return [json.loads(raw) for raw in client().hmget(entries_key, ids) if raw] if ids else []


def _claim(name: str) -> dict[str, Any]:
    """Move one entry into the replaying hash and return it; the atomic move is the claim, so no two callers get the
    same entry, and a process that dies after it leaves the entry there (stranded), not lost."""
    entries_key, index = _keys()
    raw = client().eval(_MOVE, 4, entries_key, index, *_replaying_keys(), name, time.time())
    if not raw:
        stuck = client().eval(_RECLAIM, 2, *_replaying_keys(), name, time.time() - STRANDED_AFTER, time.time())
        if not stuck:
            raise KeyError(
                f"no dead letter with id or key {name!r} (already replayed, being replayed, or dropped by retention)"
            )
        raw = stuck
    claimed: dict[str, Any] = json.loads(raw)
    return claimed


def _give_back(entry: dict[str, Any]) -> None:
    """The send failed: move the entry back among the dead letters, at its failure time."""
    score = calendar.timegm(time.strptime(entry["failed_at"], TIME_FORMAT))
    client().eval(_MOVE, 4, *_replaying_keys(), *_keys(), entry["key"], score)


def _done(entry: dict[str, Any]) -> None:
    replaying, since = _replaying_keys()
    pipe = client().pipeline()
    pipe.hdel(replaying, entry["key"])
    pipe.zrem(since, entry["key"])
    pipe.execute()


def replay(app: Celery[Any], id_or_key: str, producer: Any = None) -> str:
    """Send the task again (routed as usual) and remove its dead letter. Returns the new task id.

    Takes an entry key (as `list` prints it) or a task id: a task id replays its newest failure; older failures of
    the same id stay listed under their own keys. The entry is first moved to the replaying hash (the claim), sent,
    then removed; if the send fails it is moved back. If Redis itself fails after the send, or the process dies
    mid-replay, the entry stays in the replaying hash: `list` shows it as stranded after STRANDED_AFTER seconds.
    """
    migrate_legacy()
    names = _keys_for(id_or_key)
    name = names[-1] if names else id_or_key  # not listed: maybe a stranded replay, which _claim takes back
    stored = client().hget(_keys()[0], name)
    if stored and json.loads(stored).get("not_replayable"):
        reason = json.loads(stored)["not_replayable"]
        raise ValueError(f"dead letter {name} cannot be replayed: {reason}; re-send the task from its source")
    entry = _claim(name)
    try:
        result = app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"], producer=producer)
    except BaseException:
        # The broker did not take it: put the entry back as it was, so a failed replay loses nothing.
        _give_back(entry)
        raise
    _done(entry)
    return result.id


def replay_all(app: Celery[Any], out: Any = print) -> int:
    """Replay every entry there is now, over one producer connection. Returns how many could not be replayed."""
    migrate_legacy()
    # A snapshot: an entry that fails again is recorded under its new task id, and is not replayed in this run.
    ids, errors = cast("list[str]", client().zrange(_keys()[1], 0, -1)), 0
    with app.producer_or_acquire() as producer:
        for name in ids:
            try:
                out(f"replayed {name} as {replay(app, name, producer)}")
            except (KeyError, ValueError) as exc:
                errors += 1
                print(f"error: {exc.args[0]}", file=sys.stderr)
    return errors
