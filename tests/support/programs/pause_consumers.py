"""Pause the booted workers on the given queues, so a task on each can only reach the Deployment's worker.

Argument: the queue names. First checks that one "k8s-<queue>" worker consumes each queue, and only it. Prints
{queue: [nodes told to stop consuming it]} once none of them consumes it any more.
"""

import time

from common import arguments, emit, module

(queues,) = arguments()
app = module("celery_app").app
active = app.control.inspect(timeout=5).active_queues() or {}
mine = {node: sorted(q["name"] for q in qs) for node, qs in active.items() if node.startswith("k8s-")}
assert sorted(n.split("@")[0] for n in mine) == sorted(f"k8s-{q}" for q in queues), mine
assert all(qs == [node.split("@")[0][4:]] for node, qs in mine.items()), mine
paused: dict[str, list[str]] = {}
for node, qs in active.items():
    for q in qs:
        if not node.startswith("k8s-") and q["name"] in queues:
            paused.setdefault(q["name"], []).append(node)
deadline = time.monotonic() + 60
while True:
    # The worker replies to cancel_consumer at once and stops consuming on its next loop turn (call_soon): ask until
    # every paused node answers without the queue.
    consuming = {node: [x["name"] for x in qs] for node, qs in active.items()}
    still = {q: [n for n in nodes if q in consuming.get(n, [q])] for q, nodes in paused.items()}
    still = {q: nodes for q, nodes in still.items() if nodes}
    if not still:
        break
    assert time.monotonic() < deadline, f"still consuming after 60 s: {still}"
    for queue, nodes in still.items():
        app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=5)
    time.sleep(1)
    active = app.control.inspect(timeout=5).active_queues() or {}
emit(paused)
