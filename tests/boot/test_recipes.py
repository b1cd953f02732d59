"""The generated README's "How to" recipes, followed literally on a fresh render per broker, then booted.

tests/support/recipes.py applies each recipe's blocks as the README writes them (no edit of its own here). Then one boot
shows each recipe did what it says: the new task runs on the worker of its queue, the new setting is read from the
environment (CELERY_REPORT_EVERY_SECONDS shortens the new entry's interval to 2 s), the new schedule entry fires
through beat, and the task answers over HTTP through bin/web. "Add a queue" has its own test
(test_recipe_queue.py).
"""

import secrets
from pathlib import Path

import httpx
import pytest
import recipes
from booted import running_project, running_web
from services import log_tail, wait_until

pytestmark = pytest.mark.boot
TOKEN = secrets.token_urlsafe(24)
RECIPES = ["Add a task", "Add a setting", "Add a schedule entry", "Expose a task over HTTP"]
EVERY = "2"  # seconds between two sends of the new entry: CELERY_REPORT_EVERY_SECONDS, the new setting
# beat wakes at least this often (its default is 300 s; the entry is due every EVERY seconds).
BEAT_ENV = {"CELERY_REPORT_EVERY_SECONDS": EVERY, "CELERY_BEAT_MAX_LOOP_INTERVAL": "1"}


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_readme_recipes_work_as_written(tmp_path: Path, broker: str) -> None:
    with running_project(tmp_path, f"Recipes {broker}", broker, workers=False) as project:
        readme = (project.path / "README.md").read_text()
        edits = {heading: recipes.apply_recipe(project.path, readme, heading) for heading in RECIPES}
        print(f"\n{broker}: edits per recipe {edits}")
        low = project.queues[-1]  # the recipe routes tasks.reports to the last queue of the answers
        # The project still passes its own lint with the recipes applied: the README's blocks are clean code.
        for check in (["check", "."], ["format", "--check", "."]):
            lint = project.run("ruff", *check)
            assert lint.returncode == 0, lint.stdout + lint.stderr

        for queue in project.queues:
            project.start_worker(queue)
        for proc in project.procs:
            proc.wait_for_log("ready.")
        worker = project.proc(f"worker-{low}")

        # Add a task: discovered from the tasks package, routed by its new line, run by that queue's worker only.
        sent = project.program("call_task", "tasks.reports", "build_report", ["by-hand"])
        assert sent[1] == "report by-hand built"
        wait_until(lambda: f"[{sent[0]}] succeeded" in worker.log.read_text(), 30, lambda: log_tail(worker.log))
        others = [q for q in project.queues if q != low and sent[0] in project.proc(f"worker-{q}").log.read_text()]
        assert not others, f"the report task ran on {others}, not on {low}"

        # Add a setting: read from the environment (CELERY_<NAME>) by every process.
        setting = project.program("setting", "report_every_seconds")
        assert setting == 3600, "the recipe's default"
        beat = project.start("beat", [str(project.path / "bin" / "beat")], BEAT_ENV)
        beat.wait_for_log("beat: Starting...")

        # Add a schedule entry: beat sends it every EVERY seconds, and the worker of its queue runs it.
        wait_until(lambda: beat.count("Sending due task build-report") >= 2, 60, lambda: log_tail(beat.log))
        wait_until(lambda: worker.count("report hourly built") >= 2, 60, lambda: log_tail(worker.log))
        listing = project.module("ops", "beat", "list", env=BEAT_ENV)
        line = next(line for line in listing.stdout.splitlines() if line.startswith("build-report"))
        assert f"every {EVERY}s" in line and low in line, line

        # Expose a task over HTTP: allow-listed, validated, routed, its result readable.
        with running_web(project, "web", TOKEN) as (_, port):
            headers = {"Authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=15) as http:
                accepted = http.post("/tasks/reports.build_report", json={"name": "over-http"})
                assert accepted.status_code == 202, accepted.text
                assert accepted.json()["queue"] == low
                refused = http.post("/tasks/reports.build_report", json={"name": "Not Valid!"})
                assert refused.status_code == 422, refused.text

                def finished() -> dict | None:
                    body = http.get(accepted.json()["status_url"]).json()
                    return body if body["state"] == "SUCCESS" else None

                assert wait_until(finished, 60, "the HTTP-sent report")["result"] == "report over-http built"
