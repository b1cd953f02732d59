"""Resume what pause_consumers paused, and every booted "<queue>@host" worker (should the pause have failed half-way).

Arguments: pause_consumers' output, the booted queue names. Prints {node: sorted queues it consumes}.
"""

from common import arguments, emit, module

targets, booted_queues = arguments()
app = module("celery_app").app
for node in app.control.inspect(timeout=5).active_queues() or {}:
    if node.split("@")[0] in booted_queues:
        targets.setdefault(node.split("@")[0], []).append(node)
for queue, nodes in targets.items():
    app.control.add_consumer(queue, destination=sorted(set(nodes)), reply=True, timeout=5)
active = app.control.inspect(timeout=5).active_queues() or {}
emit({node: sorted(q["name"] for q in qs) for node, qs in active.items()})
