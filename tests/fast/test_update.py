"""Taking template updates with cruft, as a team would: the template changes, the project keeps its own edits.

A git copy of the template at commit A; `cruft create` from it; the project committed and edited by its team (a task
module, a README line, and the README's own "Add a setting" recipe, so settings.py and .env.example change on both
sides); the template gains a setting and rewords a comment (commit B); `cruft update` in the project. The update must
arrive as exactly those lines (plus cruft's commit in .cruft.json): no .rej, no other file, the project's edits and
its .env secrets untouched. The secrets in .env are made fresh at each render, so this is what the generated
pyproject.toml's `[tool.cruft] skip` and the hook's recorded answers (no `_commit`) are for. Needs no server.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import recipes
from template import ROOT

# What a template repository holds that rendering needs; tests/, tools/ and the rest never reach a project.
TEMPLATE_PARTS = ["cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}"]
ANSWERS = {"project_name": "Update Drill"}
PACKAGE = "update_drill"
SETTINGS = f"{PACKAGE}/config/settings.py"
# A fixed git identity and no user or system git configuration (a signing key, hooks, another default branch).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Maintainer",
    "GIT_AUTHOR_EMAIL": "maintainer@example.com",
    "GIT_COMMITTER_NAME": "Template Maintainer",
    "GIT_COMMITTER_EMAIL": "maintainer@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}

# The maintainers' change between commit A and commit B. edit() finds each anchor line exactly once, so a template
# reworded since this test was written fails here by name.
NEW_SETTING = [
    "    # Compress stored results (gzip, bzip2, zlib): large results cost less Redis memory. None: stored as sent.",
    "    result_compression: str | None = None",
]
NEW_ENV_LINES = [
    "# Compression of stored results (gzip, bzip2, zlib); unset: stored as sent.",
    "# CELERY_RESULT_COMPRESSION=gzip",
]
OLD_COMMENT = "    # How often the example price refresh runs (schedule.py)."
NEW_COMMENT = "    # Seconds between two example price refreshes (the entry in schedule.py)."


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
    return result


def cruft(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "cruft", *args], cwd)


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "--all"], repo)
    run(["git", "commit", "--quiet", "--message", message], repo)


def edit(path: Path, anchor: str, *, add: list[str] | None = None, replace: str | None = None) -> None:
    text = path.read_text()
    lines = text.splitlines()
    assert lines.count(anchor) == 1, f"{path.name}: expected the line {anchor!r} once, found it {lines.count(anchor)}x"
    at = lines.index(anchor)
    lines[at : at + 1] = [anchor, *add] if add else [replace]
    path.write_text("\n".join(lines) + "\n")


def template_at_commit_a(tmp_path: Path) -> Path:
    repo = tmp_path / "template"
    repo.mkdir()
    for part in TEMPLATE_PARTS:
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, repo / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, repo / part)
    run(["git", "init", "--quiet"], repo)
    commit_all(repo, "A: the template as it is")
    return repo


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    """The added and removed lines of a unified diff (file headers left out)."""
    added = [line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    return added, removed


def test_template_update_arrives_as_a_clean_diff_and_keeps_the_projects_edits(tmp_path: Path) -> None:
    template = template_at_commit_a(tmp_path)
    # --default-config: the answers come from here, never from a ~/.cookiecutterrc on the machine running the test.
    created = cruft(
        "create", str(template), "--no-input", "--default-config", "--output-dir", str(tmp_path),
        "--extra-context", json.dumps(ANSWERS), cwd=tmp_path,
    )  # fmt: skip
    project = tmp_path / "update-drill"
    assert (project / ".cruft.json").is_file(), created.stdout + created.stderr
    run(["git", "init", "--quiet"], project)
    commit_all(project, "Generated from the template")
    secrets_before = (project / ".env").read_text()
    assert run(["git", "status", "--porcelain", "--ignored"], project).stdout.strip() == "!! .env", "only .env ignored"

    # The team's own edits, committed: a task module, a README line, and the README's recipe for a setting.
    rates = project / PACKAGE / "tasks" / "rates.py"
    edit(rates, 'BREAKER = "rates_api"', replace='BREAKER = "rates_api"  # the billing workers share this circuit')
    team_note = "Team note: ask #jobs-platform before adding a queue."
    with (project / "README.md").open("a") as readme:
        readme.write(f"\n{team_note}\n")
    recipe_edits = recipes.apply_recipe(project, (project / "README.md").read_text(), "Add a setting")
    commit_all(project, "Our changes")
    ours = run(["git", "show", "--format=", "HEAD"], project).stdout

    # The maintainers' change, commit B: a new setting (with its .env.example lines) and a reworded comment.
    package_dir = template / "{{cookiecutter.project_slug}}" / "{{cookiecutter.__package}}"
    edit(package_dir / "config" / "settings.py", "    idempotency_ttl: int = 7 * 86_400", add=NEW_SETTING)
    edit(package_dir / "config" / "settings.py", OLD_COMMENT, replace=NEW_COMMENT)
    edit(
        template / "{{cookiecutter.project_slug}}" / ".env.example", "CELERY_IDEMPOTENCY_TTL=604800", add=NEW_ENV_LINES
    )
    commit_all(template, "B: a new setting, a reworded comment")
    commit_b = run(["git", "rev-parse", "HEAD"], template).stdout.strip()

    with pytest.raises(AssertionError, match="out of date"):
        cruft("check", cwd=project)  # what a team's CI job would see: the project is behind its template

    updated = cruft("update", "--skip-apply-ask", cwd=project)
    output = updated.stdout + updated.stderr
    # HEAD: git's 3-way apply stages what it merged.
    diff = run(["git", "diff", "HEAD"], project).stdout
    print(f"\nproject edits: README line, rates.py line, 'Add a setting' recipe ({recipe_edits} edits)")
    print(f"cruft update said:\n{output.strip()}\n\ngit diff after cruft update:\n{diff}")

    # Nothing rejected, nothing left over: a .rej (or an update retried without the 3-way merge) is a failed update.
    assert "Failed to apply" not in output and "*.rej" not in output, output
    changed = run(["git", "diff", "HEAD", "--name-only"], project).stdout.split()
    assert sorted(changed) == sorted([".cruft.json", ".env.example", SETTINGS]), changed
    untracked = run(["git", "ls-files", "--others", "--exclude-standard"], project).stdout.split()
    assert untracked == [], f"files the update left behind: {untracked}"
    assert not [p for p in project.rglob("*") if p.suffix in (".rej", ".orig")], "leftover .rej/.orig files"

    # Exactly the maintainers' lines, in the two files they changed.
    added, removed = changed_lines(run(["git", "diff", "HEAD", "--", SETTINGS, ".env.example"], project).stdout)
    assert sorted(added) == sorted([*NEW_SETTING, NEW_COMMENT, *NEW_ENV_LINES]), added
    assert removed == [OLD_COMMENT], removed
    # .cruft.json: only the template commit moved (its answers did not change).
    state = json.loads((project / ".cruft.json").read_text())
    before = json.loads(run(["git", "show", "HEAD:.cruft.json"], project).stdout)
    assert state["commit"] == state["context"]["cookiecutter"]["_commit"] == commit_b
    for moved in (state, before):
        del moved["commit"], moved["context"]["cookiecutter"]["_commit"]
    assert state == before

    # The team's edits survived: their commit's changes are all still there, and .env kept its secrets.
    our_added, _ = changed_lines(ours)
    files = "\n".join(path.read_text() for path in (rates, project / "README.md", project / SETTINGS))
    files += (project / ".env.example").read_text()
    assert [line for line in our_added if line not in files] == [], "an edit of the project's own was lost"
    assert (project / ".env").read_text() == secrets_before

    # After committing, the project is current, and `cruft diff` shows the team's edits only (never .env's secrets).
    commit_all(project, "Template update")
    cruft("check", cwd=project)
    ours_vs_template = cruft("diff", cwd=project).stdout
    headers = [line for line in ours_vs_template.splitlines() if line.startswith("diff --git")]
    assert team_note in ours_vs_template and not [h for h in headers if h.endswith("/.env")], ours_vs_template
    assert "result_compression" not in ours_vs_template, "the update is already part of the project"


def readme_link_commands(readme: str) -> str:
    """The generated README's lines that link a project made with cookiecutter ("Taking template updates")."""
    section = readme.split("\n## Taking template updates\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith(("answers=", "cruft link "))]
    assert len(lines) == 2, f"expected the answers= and cruft link lines, found {lines}"
    return "\n".join(lines)


def test_readme_links_a_project_made_with_cookiecutter_at_its_answers(tmp_path: Path) -> None:
    """The README's `cruft link` lines, as written, recover the answers from .cookiecutter.json: linked at the commit
    it was made from, the project shows no difference from the template (none of the non-default answers lost)."""
    template = template_at_commit_a(tmp_path)
    commit_a = run(["git", "rev-parse", "HEAD"], template).stdout.strip()
    answers = {"project_name": "Linked Drill", "broker": "rabbitmq", "use_flower": "n", "queues": "main,bulk"}
    extra = [f"{key}={value}" for key, value in answers.items()]
    run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", str(tmp_path), str(template), *extra],
        tmp_path,
    )
    project = tmp_path / "linked-drill"
    run(["git", "init", "--quiet"], project)
    commit_all(project, "Generated with cookiecutter")

    script = readme_link_commands((project / "README.md").read_text())
    script = script.replace("<template git URL>", str(template)).replace("<tag or commit it was made from>", commit_a)
    env_path = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # cruft, as installed
    linked = subprocess.run(
        ["bash", "-c", f"set -o errexit\n{script}"], cwd=project, env={**os.environ, **GIT_ENV, **env_path},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert linked.returncode == 0, f"{script}\n{linked.stdout}{linked.stderr}"
    print(f"\nthe README's link lines:\n{script}")

    state = json.loads((project / ".cruft.json").read_text())
    assert state["commit"] == commit_a
    assert {key: state["context"]["cookiecutter"][key] for key in answers} == answers
    cruft("diff", "--exit-code", cwd=project)  # exit 1 on any difference: a lost answer would show as one
