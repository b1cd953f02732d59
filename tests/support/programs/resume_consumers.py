"""Resume what pause_consumers paused, and every booted "<queue>@host" worker (should the pause have failed half-way).

Arguments: pause_consumers' output, the booted queue names. Prints {node: sorted queues it consumes}.
"""

import time

from common import arguments, emit, module

targets, booted_queues = arguments()
app = module("celery_app").app
for node in app.control.inspect(timeout=5).active_queues() or {}:
    if node.split("@")[0] in booted_queues:
        targets.setdefault(node.split("@")[0], []).append(node)
consuming: dict[str, list[str]] = {}
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    # The worker replies to add_consumer at once and starts consuming on its next loop turn (call_soon): read back
    # what it consumes, and ask again for what is still missing.
    missing = {q: sorted({n for n in nodes if q not in consuming.get(n, [])}) for q, nodes in targets.items()}
    missing = {q: nodes for q, nodes in missing.items() if nodes}
    if consuming and not missing:
        break
    for queue, nodes in missing.items():
        app.control.add_consumer(queue, destination=nodes, reply=True, timeout=5)
    time.sleep(1)
    active = app.control.inspect(timeout=5).active_queues() or {}
    consuming = {node: sorted(q["name"] for q in qs) for node, qs in active.items()}
emit(consuming)
