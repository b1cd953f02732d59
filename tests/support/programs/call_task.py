"""Send one task of the booted project and wait for its result.

Arguments: the task's module inside the package (e.g. "tasks.orders"), the task's name in it, its positional
arguments. Prints [task id, result].
"""

from common import arguments, emit, module

where, name, args = arguments()
result = getattr(module(where), name).delay(*args)
emit([result.id, result.get(timeout=60)])
