"""The queue a beat schedule entry is routed to. Argument: the entry's name. Prints the queue name."""

from common import arguments, emit, module

(name,) = arguments()
emit(next(entry.queue for entry in module("config.schedule").ENTRIES if entry.name == name))
