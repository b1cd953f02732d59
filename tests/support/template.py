"""The template's options and rendering, shared by the fast and boot tiers.

The test matrix is derived from cookiecutter.json: a new choice gets render, lint and parse tests for free.
"""

import importlib.util
import itertools
import json
import re
import zoneinfo
from pathlib import Path
from types import ModuleType

import jinja2
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).resolve().parents[2]  # tests/support/template.py -> the template repository


def load_hook(name: str) -> ModuleType:
    """hooks/<name>.py as a module, so tests call its functions and read its constants."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# What .env.example holds where a secret goes; the post-generation hook replaces each with a fresh one.
PLACEHOLDER = load_hook("post_gen_project").PLACEHOLDER
OPTIONS = json.loads((ROOT / "cookiecutter.json").read_text())
# Choice options are the lists; the first item is the default.
CHOICES = {name: values for name, values in OPTIONS.items() if isinstance(values, list) and not name.startswith("_")}

# The answers that change the generated project's dependency set: those the derived `__deps` key is made of. One
# uv.lock per combination sits in the template (tools/lock.py writes them; tests/fast/test_lock.py checks them), each
# under a conditional file name that renders to `uv.lock` in its own combination only.
DEPS_OPTIONS = tuple(re.findall(r"cookiecutter\.(\w+)", OPTIONS["__deps"]))
DEPS_VARIANTS: list[dict[str, str]] = [
    dict(zip(DEPS_OPTIONS, combo, strict=True))
    for combo in itertools.product(*(CHOICES[name] for name in DEPS_OPTIONS))
]
# The project name the template's locks are made with; it stands as `{{ cookiecutter.project_slug }}` in them.
LOCK_SLUG = "lock-source"


def deps_key(answers: dict[str, str]) -> str:
    """The `__deps` value of these answers, e.g. flower-y-web-n."""
    return jinja2.Template(OPTIONS["__deps"]).render(cookiecutter=answers)


def lock_template(answers: dict[str, str]) -> Path:
    """The template file that renders to the project's uv.lock for these answers."""
    name = f'{{% if cookiecutter.__deps == "{deps_key(answers)}" %}}uv.lock{{% endif %}}'
    return ROOT / "{{cookiecutter.project_slug}}" / name


# Options whose every combination is rendered; each value of the other choices is rendered once, with the rest at
# their defaults (the full product would be hundreds of renders for little extra coverage).
PRIMARY = ("python_version", "broker")
SUPPORTED: list[dict[str, str]] = [
    dict(zip(PRIMARY, combo, strict=True)) for combo in itertools.product(*(CHOICES[name] for name in PRIMARY))
]
SUPPORTED += [{name: value} for name, values in CHOICES.items() if name not in PRIMARY for value in values[1:]]
# The longest value the hook allows for each free-text answer, as people type them, so no interpolated line can grow
# past the line length: the longest IANA zone name, ten queues of 32 characters (the hook's limit), a name with
# accents and quotes whose derived slug is 40 characters (the limit), an e-mail address with a plus sign.
LONGEST_ZONE = max(sorted(zoneinfo.available_timezones()), key=len)
LONGEST_QUEUES = [(f"bulk_import_{i:02d}_" if i % 2 else f"bulk-import-{i:02d}-").ljust(32, "x") for i in range(10)]
LONGEST = {
    "project_name": 'Café O\'Brien "Déjà Vu" Jobs Über Straße X',
    "author_name": "Zoë O'Brien-Núñez",
    "author_email": "platform+celery-jobs@example.com",
    "timezone": LONGEST_ZONE,
}
# Free-text answers that exercise the edges.
SUPPORTED += [
    {"queues": "default"},
    # Every longest value at once, once per broker (RabbitMQ derives more names from each queue); the RabbitMQ set
    # also has spaces after the commas, and the names mix '_' and '-'.
    {**LONGEST, "queues": ",".join(LONGEST_QUEUES)},
    {**LONGEST, "queues": ", ".join(LONGEST_QUEUES), "broker": "rabbitmq"},
    {"project_name": "Billing", "description": 'Quotes "inside", backslash \\ and {braces}'},
]

# Answers the pre-generation hook must refuse, with the words its one-line reason must contain.
UNSUPPORTED: list[tuple[dict[str, str], str]] = [
    ({"project_slug": "my project"}, "project_slug 'my project' must match"),
    ({"project_slug": "9lives"}, "project_slug '9lives' must match"),
    ({"project_slug": "import"}, "package name 'import' would shadow"),
    ({"project_slug": "json"}, "package name 'json' would shadow"),
    ({"project_slug": "celery"}, "package name 'celery' would shadow"),
    ({"project_slug": "x" * 41}, "is 41 characters; the limit is 40"),
    ({"queues": ""}, "has an empty name"),
    ({"queues": "default,,low"}, "has an empty name"),
    ({"queues": "default,high,default"}, "lists default more than once"),
    # Each refused name breaks exactly one rule, so relaxing any one rule turns exactly its case red.
    ({"queues": "default,bad queue"}, "queue name 'bad queue' must match [a-z0-9_-]+"),
    ({"queues": "default,bad.queue"}, "queue name 'bad.queue' must match [a-z0-9_-]+"),
    ({"queues": "default,bad/queue"}, "queue name 'bad/queue' must match [a-z0-9_-]+"),
    ({"queues": "default,BadQueue"}, "queue name 'BadQueue' must match [a-z0-9_-]+"),
    ({"queues": "default,celeryev"}, "queue name 'celeryev' is reserved"),
    ({"queues": "default,unacked"}, "queue name 'unacked' is a Redis key name"),
    ({"queues": "default,deadletters"}, "queue name 'deadletters' is a Redis key name"),
    ({"queues": "default,bulk_import,bulk-import"}, "differ only in '_' versus '-'"),
    ({"queues": "default," + "q" * 33}, "is longer than 32 characters"),
    ({"timezone": "Mars/Olympus"}, "timezone 'Mars/Olympus' is not an IANA time zone name"),
    ({"use_flower": "n", "flower_auth": "github"}, "flower_auth=github needs use_flower=y"),
]


def case_id(answers: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in answers.items()) or "defaults"


def render(output_dir: Path, answers: dict[str, str]) -> Path:
    """Render the template with `answers` over the defaults; returns the project directory."""
    return Path(cookiecutter(str(ROOT), no_input=True, output_dir=str(output_dir), extra_context=answers))
