"""app.send_task by name, which bypasses the task class's own apply_async checks (as another service would send it).

Arguments: the task name, its args, the countdown, the queue. Prints the task id.
"""

from common import arguments, emit, module

name, args, countdown, queue = arguments()
emit(module("celery_app").app.send_task(name, args=args, countdown=countdown, queue=queue).id)
