"""Send one task with publishing options (e.g. {"retries": 12}: a task that has used up its retry budget).

Arguments: the task's module inside the package, the task's name in it, its args, the options. Prints the task id.
"""

from common import arguments, emit, module

where, name, args, options = arguments()
emit(getattr(module(where), name).apply_async(args=args, **options).id)
