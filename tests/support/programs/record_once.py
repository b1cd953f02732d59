"""The diagnostics task record_once: records its side effect once per key, then works on. Arguments: the key, the
seconds it works after the effect. Prints the task id."""

from common import arguments, emit, module

key, seconds = arguments()
emit(module("tasks.diagnostics").record_once.delay(key, seconds).id)
