"""Health checks for supervisors and container probes: `python -m <package>.health worker`.

Exit 0 when healthy, 1 with a one-line reason otherwise. Deliberately cheap: no broker round trip, no Celery app import.
"""

import argparse
import sys

from .heartbeat import HEARTBEAT_STALE_AFTER, heartbeat_age, heartbeat_path


def check_worker(max_age: float) -> str | None:
    age = heartbeat_age()
    if age is None:
        return f"no heartbeat file at {heartbeat_path()} (worker not started, or stopped)"
    if age > max_age:
        return f"heartbeat {age:.0f}s old at {heartbeat_path()} (limit {max_age:.0f}s): worker main loop is stuck"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m {{ cookiecutter.__package }}.health")
    parser.add_argument("process", choices=["worker"])
    parser.add_argument("--max-age", type=float, default=HEARTBEAT_STALE_AFTER, help="seconds (default %(default)s)")
    args = parser.parse_args(argv)
    problem = check_worker(args.max_age)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
