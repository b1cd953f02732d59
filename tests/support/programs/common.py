"""What every program shares: the booted project's package, JSON arguments in, one JSON line out.

Each program is a fresh Python process run in a booted project's environment, as a producer service would be
(booted.BootedProject.program). The project's name varies per test, so its package comes from PROJECT_PACKAGE.
"""

import importlib
import json
import os
import sys
from types import ModuleType
from typing import Any

PACKAGE = os.environ["PROJECT_PACKAGE"]
# Run from the project root (booted.BootedProject.run), as `python -c` would see it: the project's package (installed
# or not) and devtools/ import from there. A script's own sys.path starts at its folder instead.
sys.path.insert(0, os.getcwd())


def module(name: str) -> ModuleType:
    """`module("tasks.orders")` is the booted project's `<package>.tasks.orders`."""
    return importlib.import_module(f"{PACKAGE}.{name}")


def diagnostics() -> ModuleType:
    """The fault-drill tasks, `devtools.diagnostics` at the project root (outside the package, never in production)."""
    return importlib.import_module("devtools.diagnostics")


def arguments() -> list[Any]:
    """The command line's arguments, each a JSON value."""
    return [json.loads(arg) for arg in sys.argv[1:]]


def emit(value: Any) -> None:
    """The program's answer: the last line of its output, read back as JSON by the test."""
    print(json.dumps(value), flush=True)
