"""Send tasks of the booted project without waiting for them.

Arguments: the task's module inside the package (e.g. "tasks.notifications"), the task's name in it, and a list of
calls, each [args, kwargs]. Prints the task ids.
"""

from common import arguments, emit, module

where, name, calls = arguments()
task = getattr(module(where), name)
emit([task.apply_async(args=args, kwargs=kwargs).id for args, kwargs in calls])
