"""Finish the rendered project: real secrets in `.env`, and the answers recorded for re-rendering.

Runs inside the generated project directory. Kept free of Jinja except the context line at the bottom, so
tests/fast/test_hooks.py can import and call the functions directly.
"""

import json
import os
import secrets
import sys
from pathlib import Path

# Every occurrence of this placeholder in a value of .env.example gets its own fresh secret ("admin:change-me" keeps
# the user name); the settings refuse the placeholder, so a copied .env.example never reaches production.
PLACEHOLDER = "change-me"
# Keys that are not answers. cookiecutter's describe this machine: recording them would leak local paths. cruft's
# `_commit` (the template commit, kept in .cruft.json) would make every `cruft update` rewrite this file.
NOT_ANSWERS = {"_output_dir", "_repo_dir", "_checkout", "_commit"}


def write_env(project: Path) -> Path:
    lines = []
    for line in (project / ".env.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#") and PLACEHOLDER in value:
            line = f"{key}={value.replace(PLACEHOLDER, secrets.token_urlsafe(32))}"
        lines.append(line)
    env = project / ".env"
    # Secrets: created readable by the owner only, so there is no moment between a write and a chmod when others can
    # read them (the umask can only remove bits from 0600).
    fd = os.open(env, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # an existing .env keeps its old mode through O_CREAT: restrict it before writing
        out.write("\n".join(lines) + "\n")
    return env


def record_answers(project: Path, context: dict) -> Path:
    answers = {key: value for key, value in context.items() if key not in NOT_ANSWERS}
    # The replay-file shape, so `cookiecutter --replay-file .cookiecutter.json TEMPLATE` re-renders this project.
    path = project / ".cookiecutter.json"
    path.write_text(json.dumps({"cookiecutter": answers}, indent=2, sort_keys=True) + "\n")
    return path


# A bundle holds several rendered files, each after a line "#@ file: <path relative to the bundle's directory>":
# Jinja renders one file per template file, so files that repeat per queue are rendered into one bundle.
BUNDLE_SUFFIX = ".bundle"
BUNDLE_MARKER = "#@ file: "


def split_bundles(project: Path) -> list[Path]:
    """Write the files of every *.bundle in the project and delete the bundle; returns the files written."""
    written = []
    for bundle in sorted(project.rglob(f"*{BUNDLE_SUFFIX}")):
        files: dict[Path, list[str]] = {}
        current: list[str] | None = None
        for line in bundle.read_text().splitlines():
            if line.startswith(BUNDLE_MARKER):
                target = (bundle.parent / line.removeprefix(BUNDLE_MARKER).strip()).resolve()
                if bundle.parent.resolve() not in target.parents or target in files:
                    raise SystemExit(f"ERROR: {bundle.name}: {line!r} names a path outside its directory or twice")
                current = files[target] = []
            elif current is not None:
                current.append(line)
            elif line.strip():
                raise SystemExit(f"ERROR: {bundle.name}: text before the first {BUNDLE_MARKER!r} line")
        for target, lines in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines).strip("\n") + "\n")
            written.append(target)
        bundle.unlink()
    return written


def remove_empty_dirs(project: Path) -> list[Path]:
    """Directories whose every file had a conditional name that rendered empty (cookiecutter skips such files but
    keeps their directory). Feature files are never deleted here: they are simply not rendered."""
    removed = []
    for directory in sorted((p for p in project.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
            removed.append(directory)
    return removed


def main(project: Path, context: dict) -> int:
    write_env(project)
    record_answers(project, context)
    split_bundles(project)
    remove_empty_dirs(project)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path.cwd(), json.loads(r"""{{ cookiecutter | tojson }}""")))
