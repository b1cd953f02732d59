"""One setting as the booted project's processes read it. Argument: its name. Prints its value."""

from common import arguments, emit, module

(name,) = arguments()
emit(getattr(module("config.settings").settings, name))
