"""Pause the booted workers on the given queues, so a task on each can only reach the Deployment's worker.

Argument: the queue names. First checks that one "k8s-<queue>" worker consumes each queue, and only it. Prints
{queue: [nodes told to stop consuming it]}.
"""

from common import arguments, emit, module

(queues,) = arguments()
app = module("celery_app").app
active = app.control.inspect(timeout=5).active_queues() or {}
mine = {node: sorted(q["name"] for q in qs) for node, qs in active.items() if node.startswith("k8s-")}
assert sorted(n.split("@")[0] for n in mine) == sorted(f"k8s-{q}" for q in queues), mine
assert all(qs == [node.split("@")[0][4:]] for node, qs in mine.items()), mine
paused = {}
for node, qs in active.items():
    for q in qs:
        if not node.startswith("k8s-") and q["name"] in queues:
            app.control.cancel_consumer(q["name"], destination=[node], reply=True, timeout=5)
            paused.setdefault(q["name"], []).append(node)
emit(paused)
