"""The README's "How to" recipes as a program: each `<!-- recipe-... -->` comment and the fenced block after it.

    <!-- recipe-edit: create PATH -->           the block is a new file's whole content
    <!-- recipe-edit: append PATH -->           the block is appended to the file, after a blank line (two in .py files)
    <!-- recipe-edit: after "ANCHOR" PATH -->   the block is inserted after the first line containing ANCHOR
    <!-- recipe-run -->                          the block (```sh) is a command run from the project root

A recipe is the text under its `### ` heading, up to the next heading. Anything the applier cannot do (a missing
anchor, a file that already exists, a comment without its block) stops it with a one-line reason.
"""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

COMMENT = re.compile(r"<!-- recipe-(edit|run)(?::\s*(.*?))?\s*-->")
FENCE = re.compile(r"^```[\w-]*\n(.*?)^```\s*$", re.M | re.S)
EDIT = re.compile(r'^(create|append)\s+(\S+)$|^after\s+"([^"]+)"\s+(\S+)$')


class RecipeError(Exception):
    """A recipe that cannot be applied as written."""


@dataclass(frozen=True)
class Step:
    kind: str  # create | append | after | run
    path: str  # relative to the project root ("" for run)
    anchor: str  # after only
    block: str


def section(readme: str, heading: str) -> str:
    """The text under `### heading`, up to the next heading."""
    # Up to the next `## ` or `### ` heading (a `# ` line may be a comment inside a code block).
    match = re.search(rf"^### {re.escape(heading)}\s*$(.*?)(?=^#{{2,3}} |\Z)", readme, re.M | re.S)
    if not match:
        raise RecipeError(f"README has no '### {heading}' recipe")
    return match.group(1)


def steps(text: str) -> list[Step]:
    found = []
    for comment in COMMENT.finditer(text):
        fence = FENCE.search(text, comment.end())
        between = text[comment.end() : fence.start()] if fence else ""
        if not fence or between.strip():
            raise RecipeError(f"{comment.group(0)} is not followed directly by a fenced block")
        if comment.group(1) == "run":
            found.append(Step("run", "", "", fence.group(1)))
            continue
        edit = EDIT.match((comment.group(2) or "").strip())
        if not edit:
            raise RecipeError(f"{comment.group(0)}: expected 'create PATH', 'append PATH' or 'after \"ANCHOR\" PATH'")
        if edit.group(1):
            found.append(Step(edit.group(1), edit.group(2), "", fence.group(1)))
        else:
            found.append(Step("after", edit.group(4), edit.group(3), fence.group(1)))
    return found


def apply_step(project_dir: Path, step: Step) -> None:
    if step.kind == "run":
        result = subprocess.run(step.block, shell=True, cwd=project_dir, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RecipeError(f"recipe command failed ({result.returncode}): {step.block.strip()}\n{result.stderr}")
        return
    path = project_dir / step.path
    if step.kind == "create":
        if path.exists():
            raise RecipeError(f"create {step.path}: the file already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(step.block)
        return
    if not path.exists():
        raise RecipeError(f"{step.kind} {step.path}: no such file in the project")
    text = path.read_text()
    if step.kind == "append":
        # Separated as a reader would: PEP 8's two blank lines before top-level code, one elsewhere.
        gap = "\n\n\n" if path.suffix == ".py" else "\n\n"
        path.write_text(text.rstrip("\n") + gap + step.block)
        return
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if step.anchor in line), None)
    if at is None:
        raise RecipeError(f'after "{step.anchor}" {step.path}: no line of the file contains the anchor')
    lines.insert(at + 1, step.block)
    path.write_text("".join(lines))


def apply_recipe(project_dir: Path, readme_text: str, heading: str) -> int:
    """Apply the recipe under `### heading` to the project; returns its number of edits (recipe-edit blocks)."""
    recipe = steps(section(readme_text, heading))
    if not recipe:
        raise RecipeError(f"'### {heading}' has no recipe-edit or recipe-run blocks")
    for step in recipe:
        apply_step(project_dir, step)
    return sum(step.kind != "run" for step in recipe)
