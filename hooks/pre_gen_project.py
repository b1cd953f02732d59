"""Refuse bad cookiecutter answers before anything is written.

Each check returns one line saying what is wrong and what is allowed; `main` prints it and exits 1, so cookiecutter
removes nothing because it has created nothing yet. The functions take the answers as a dict so tests can call them
without rendering (tests/fast/test_hooks.py).
"""

import json
import keyword
import re
import sys
import zoneinfo

SLUG_RE = re.compile(r"[a-z][a-z0-9-]*")
# The slug ends up in node names, Redis key prefixes and Kubernetes names (63 characters with suffixes); keep it short.
MAX_SLUG = 40
QUEUE_RE = re.compile(r"[a-z0-9_-]+")
MAX_QUEUE = 32
# Names a dependency or Celery itself already uses: `import celery` inside a package called celery shadows the library.
TAKEN_NAMES = {"celery", "kombu", "redis", "amqp", "billiard", "vine", "pydantic", "flower", "redbeat", "tests"}
# Directories of the generated project beside the package: a package of the same name would be shadowed by them.
TAKEN_NAMES |= {"devtools"}
# Celery and RabbitMQ create queues with these prefixes for events, remote control and delayed delivery.
RESERVED_QUEUE_PREFIXES = ("celery", "amq.")
# With the Redis broker a queue's list is "<key prefix>:<queue>", next to kombu's own keys and the project's
# (redis_store.key, RedBeat): a queue with one of these names would share (or look like) a key holding something else.
RESERVED_KEY_NAMES = ("unacked", "unacked_index", "unacked_mutex", "deadletters", "idempotency", "metrics", "outbox")
RESERVED_KEY_NAMES += ("diagnostics", "redbeat")

# Combinations that render but cannot work, each with the reason shown to the user.
UNSUPPORTED: list[tuple[dict[str, str], str]] = [
    *(
        ({"use_flower": "n", "flower_auth": provider}, f"flower_auth={provider} needs use_flower=y")
        for provider in ("github", "google", "gitlab", "okta")
    ),
]


def check_names(answers: dict) -> list[str]:
    slug, package = answers["project_slug"], answers["__package"]
    errors = []
    if not SLUG_RE.fullmatch(slug):
        errors.append(f"project_slug {slug!r} must match [a-z][a-z0-9-]* (lowercase letters, digits, hyphens)")
    if len(slug) > MAX_SLUG:
        errors.append(f"project_slug {slug!r} is {len(slug)} characters; the limit is {MAX_SLUG}")
    if not package.isidentifier():
        errors.append(f"package name {package!r} (from project_slug) must be a valid Python identifier")
    elif keyword.iskeyword(package) or package in sys.stdlib_module_names or package in TAKEN_NAMES:
        errors.append(f"package name {package!r} would shadow a Python keyword or module; choose another project_slug")
    return errors


def check_queues(answers: dict) -> list[str]:
    raw = answers["queues"]
    names = [name.strip() for name in raw.split(",")]
    if not raw.strip() or "" in names:
        return [f"queues {raw!r} has an empty name; give comma-separated names like 'default,high,low'"]
    errors = [f"queue name {name!r} must match [a-z0-9_-]+" for name in names if not QUEUE_RE.fullmatch(name)]
    errors += [
        f"queue name {name!r} is reserved by Celery/RabbitMQ; choose another"
        for name in names
        if name.startswith(RESERVED_QUEUE_PREFIXES)
    ]
    if answers.get("broker") == "redis":
        errors += [
            f"queue name {name!r} is a Redis key name of this project or kombu (unacked, deadletters..); choose another"
            for name in names
            if name in RESERVED_KEY_NAMES
        ]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        errors.append(f"queues lists {', '.join(duplicates)} more than once; each queue name must be unique")
    # Kubernetes object names use the queue with "_" as "-" and must stay within 63 characters with their prefixes.
    dns_names = [name.replace("_", "-") for name in names]
    clashes = sorted(
        {n for n, dns in zip(names, dns_names, strict=True) if dns_names.count(dns) > 1 and n not in duplicates}
    )
    if clashes:
        errors.append(
            f"queues {', '.join(clashes)} differ only in '_' versus '-'; their Kubernetes names would collide"
        )
    errors += [f"queue name {name!r} is longer than {MAX_QUEUE} characters" for name in names if len(name) > MAX_QUEUE]
    return errors


def check_timezone(answers: dict) -> list[str]:
    name = answers["timezone"]
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return [f"timezone {name!r} is not an IANA time zone name (e.g. 'UTC', 'Europe/Paris')"]
    return []


def check_combinations(answers: dict) -> list[str]:
    return [reason for combo, reason in UNSUPPORTED if all(answers.get(k) == v for k, v in combo.items())]


def validate(answers: dict) -> list[str]:
    return check_names(answers) + check_queues(answers) + check_timezone(answers) + check_combinations(answers)


def main(answers: dict) -> int:
    errors = validate(answers)
    for error in errors:
        print(f"ERROR: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    # tojson escapes quotes as \u0027, so the raw string below cannot be closed early by an answer.
    sys.exit(main(json.loads(r"""{{ cookiecutter | tojson }}""")))
