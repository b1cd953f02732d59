"""Send the diagnostics task record_run once per call, as a producer would.

Argument: a list of calls, each {"key": str} with optional "seconds" (how long it runs), "queue", "priority".
Without "queue" task_routes decides. With a second argument `true`, waits for each result (60 s) before the next.
Prints the task ids, in order.
"""

from common import arguments, diagnostics, emit

calls, *rest = arguments()
wait = bool(rest and rest[0])
record_run = diagnostics().record_run
ids = []
for call in calls:
    options = {name: call[name] for name in ("queue", "priority") if call.get(name) is not None}
    args = [call["key"], call["seconds"]] if "seconds" in call else [call["key"]]
    result = record_run.apply_async(args=args, **options)
    if wait:
        result.get(timeout=60)
    ids.append(result.id)
emit(ids)
