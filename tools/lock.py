"""Regenerate the generated project's uv.lock for every dependency variant: `make lock` (add ARGS=--upgrade to move
every pin to the newest version pyproject.toml allows). `--export` prints the largest variant's locked requirements
with hashes instead (tools/bootstrap.sh installs the template's test environment from them).

Each variant (a combination of the answers `__deps` in cookiecutter.json is made of) is rendered into a temporary
directory with its current lock, `uv lock` brings the lock in step with the rendered pyproject.toml (keeping every pin
it can), and the result goes back into the template with the project's own name replaced by
`{{ cookiecutter.project_slug }}`. uv compares locks by content, not text, so a project whose name sorts elsewhere
still passes `uv lock --check` (tests/fast/test_lock.py).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))
from template import DEPS_VARIANTS, LOCK_SLUG, deps_key, lock_template, render  # noqa: E402

# The uv next to this Python (requirements-dev.txt pins it; pyproject.toml's required-version must agree).
UV = str(Path(sys.executable).with_name("uv"))


def relock(answers: dict[str, str], upgrade: bool, work: Path) -> str:
    project = render(work, {**answers, "project_name": "Lock Source"})
    assert project.name == LOCK_SLUG, project.name
    subprocess.run([UV, "lock", "--quiet", *(["--upgrade"] if upgrade else [])], cwd=project, check=True)
    text = (project / "uv.lock").read_text()
    # Anything Jinja would read as syntax must not be in a lock: it is rendered as a template.
    assert not any(mark in text for mark in ("{{", "{%", "{#")), "the lock holds Jinja syntax"
    return text.replace(f'"{LOCK_SLUG}"', '"{{ cookiecutter.project_slug }}"')


def export(work: Path) -> str:
    """The variant with the most packages (its locked runtime and every extra), as hashed requirements."""
    answers = max(DEPS_VARIANTS, key=lambda variant: lock_template(variant).read_text().count("[[package]]"))
    project = render(work, answers)
    argv = [UV, "export", "--locked", "--all-extras", "--no-emit-project", "--format", "requirements-txt", "--quiet"]
    return subprocess.run(argv, cwd=project, check=True, capture_output=True, text=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upgrade", action="store_true", help="newest allowed versions, not only what changed")
    parser.add_argument("--export", action="store_true", help="print the largest variant's hashed requirements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.export:
            sys.stdout.write(export(Path(tmp)))
            return
        for answers in DEPS_VARIANTS:
            target = lock_template(answers)
            text = relock(answers, args.upgrade, Path(tmp) / deps_key(answers))
            changed = not target.exists() or target.read_text() != text
            target.write_text(text)
            packages = text.count("[[package]]") - 1  # the project itself is one
            print(f"{deps_key(answers)}: {packages} pinned packages{' (changed)' if changed else ''}")


if __name__ == "__main__":
    main()
