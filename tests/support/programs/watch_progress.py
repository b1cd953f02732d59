"""Send one task and watch its state from outside while it runs, as a caller polling the result backend would.

Arguments: the task's module inside the package, the task's name, its kwargs. Prints the distinct
[state, percent] pairs seen, then [final state, result].
"""

import time

from common import arguments, emit, module

where, name, kwargs = arguments()
result = getattr(module(where), name).delay(**kwargs)
seen: list[list] = []
deadline = time.monotonic() + 60
while not result.ready() and time.monotonic() < deadline:
    # One backend read for state and meta together: reading result.state then result.info is two reads, and the task
    # can finish between them (a PROGRESS state paired with the final result's meta).
    meta = result.backend.get_task_meta(result.id)
    info = meta.get("result")
    step = [meta["status"], info.get("percent") if isinstance(info, dict) else None]
    if not seen or seen[-1] != step:
        seen.append(step)
    time.sleep(0.2)
seen.append([result.state, result.get(timeout=10)])
emit(seen)
