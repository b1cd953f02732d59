"""Boot tier: the generated README's "Add a queue" recipe, followed literally on a fresh render, gives a working queue.

Every edit is taken from the rendered README's own blocks (`<!-- recipe-edit: ... -->` and `<!-- recipe-run -->`),
so the test does what a reader does. Then: both Kubernetes overlays build with the new worker's Deployment, budget
and autoscaler passing the checks every worker passes; compose and supervisor run a worker for the new queue; and a
real worker started through bin/worker with the environment supervisor gives it runs a task routed to that queue.
Per broker; the RabbitMQ render uses autoscaling=hpa, so both autoscaler forms of the recipe are followed.
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker_env
import pytest
import services
from booted import BootedProject, read_answers, serving
from k8s_policy import (
    KEDA_GROUP,
    OVERLAYS,
    Checks,
    Manifests,
    build,
    check_keda,
    check_policies,
    require_kubectl,
    schema_problems,
    validation_versions,
    write_secret_env,
)
from recipes import apply_recipe
from supervisor.options import ServerOptions
from template import render

pytestmark = pytest.mark.boot

HEADING = "Add a queue"
QUEUE = "exports"
WORKER = f"worker-{QUEUE}"
VARIANTS = {"redis": {"broker": "redis"}, "rabbitmq": {"broker": "rabbitmq", "autoscaling": "hpa"}}


@dataclass
class Recipe:
    broker: str
    path: Path
    package: str
    edits: int


@pytest.fixture(scope="module", params=list(VARIANTS), ids=lambda broker: f"broker={broker}")
def recipe(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    broker = request.param
    path = render(tmp_path_factory.mktemp(f"recipe-{broker}"), {"project_name": "Recipe Queue", **VARIANTS[broker]})
    edits = apply_recipe(path, (path / "README.md").read_text(), HEADING)
    print(f"\n{broker}: '{HEADING}' applied from the rendered README: {edits} edits")
    return Recipe(broker, path, read_answers(path)["__package"], edits)


def test_the_edited_project_still_passes_ruff(recipe: Recipe) -> None:
    ruff = Path(sys.executable).parent / "ruff"
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run([str(ruff), *args, "."], cwd=recipe.path, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_overlays_have_the_new_worker(recipe: Recipe, overlay: str) -> None:
    require_kubectl()
    k8s = recipe.path / "deploy" / "k8s"
    write_secret_env(k8s / "overlays" / overlay)
    manifests = Manifests(build(k8s, overlay))
    deployment = manifests.get("Deployment", WORKER)
    assert deployment is not None, f"overlays/{overlay} builds no Deployment {WORKER}"
    assert manifests.worker_queues(deployment) == [QUEUE]
    env = manifests.env(deployment["spec"]["template"]["spec"]["containers"][0])
    assert QUEUE in env["CELERY_QUEUES"].split(","), f"app-config's CELERY_QUEUES is {env['CELERY_QUEUES']}"
    assert manifests.get("PodDisruptionBudget", WORKER) is not None, f"no PodDisruptionBudget {WORKER}"
    autoscaling = read_answers(recipe.path)["autoscaling"]
    if autoscaling == "keda":
        scaler = next((s for s in manifests.of("ScaledObject", KEDA_GROUP) if s["metadata"]["name"] == WORKER), None)
    else:
        scaler = manifests.get("HorizontalPodAutoscaler", WORKER)
    assert scaler is not None and scaler["spec"]["scaleTargetRef"]["name"] == WORKER, f"no {autoscaling} for {WORKER}"
    new = [deployment, manifests.get("PodDisruptionBudget", WORKER)] + ([] if autoscaling == "keda" else [scaler])
    _, problems = schema_problems(new, validation_versions())
    assert not problems, "\n".join(problems)
    check, keda = Checks(), Checks()
    namespace = f"{recipe.path.name}-staging" if overlay == "staging" else recipe.path.name
    check_policies(manifests, check, slug=recipe.path.name, package=recipe.package, namespace=namespace)
    if autoscaling == "keda":
        check_keda(manifests, keda, broker=recipe.broker)
    workers = sorted(d["metadata"]["name"] for d in manifests.by_command("worker"))
    print(f"\n{overlay}: workers {workers}; {check.count} policy checks, {keda.count} KEDA checks")
    check.assert_ok()
    keda.assert_ok()


def test_the_package_declares_the_queue_without_an_env_file(recipe: Recipe) -> None:
    """settings.py's own default (what runs with no .env and no CELERY_QUEUES, e.g. the project's unit tests)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    # Required settings; nothing connects here.
    env.update(ENVIRONMENT="development", REDIS_URL="redis://127.0.0.1:6379/0")
    amqp = "amqp://guest:guest@127.0.0.1:5672//"
    env["CELERY_BROKER_URL"] = amqp if recipe.broker == "rabbitmq" else env["REDIS_URL"]
    program = f"from {recipe.package}.config.settings import Settings; print(Settings(_env_file=None).queues)"
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=recipe.path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert QUEUE in result.stdout, f"settings.py declares {result.stdout.strip()}"


def test_compose_runs_a_worker_for_the_new_queue(recipe: Recipe) -> None:
    plain = json.loads(docker_env.must(docker_env.compose_config(recipe.path, "compose.yaml")).stdout)["services"]
    assert WORKER in plain, f"compose.yaml has no service {WORKER}: {sorted(plain)}"
    assert plain[WORKER]["command"] == ["bin/worker"]
    assert plain[WORKER]["environment"]["WORKER_QUEUES"] == QUEUE
    assert plain[WORKER]["environment"]["REDIS_URL"] == plain["beat"]["environment"]["REDIS_URL"]
    dev = json.loads(docker_env.must(docker_env.compose_config(recipe.path)).stdout)["services"]
    assert dev[WORKER]["command"][0] == "watchfiles" and "bin/worker" in dev[WORKER]["command"]


def supervisor_programs(conf: Path) -> dict[str, dict]:
    """The worker programs as supervisord reads them: group:name -> process config fields."""
    run = tempfile.mkdtemp()
    env = {"SUPERVISOR_RUN_DIR": run, "SUPERVISOR_LOG_DIR": run, "SUPERVISOR_PASSWORD": "x"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        options = ServerOptions()
        options.realize(args=["-c", str(conf)])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return {f"{g.name}:{p.name}": vars(p) for g in options.process_group_configs for p in g.process_configs}


def test_supervisor_runs_the_new_worker_like_the_others(recipe: Recipe) -> None:
    programs = supervisor_programs(recipe.path / "deploy" / "supervisord.conf")
    new, default = programs.get(f"workers:{WORKER}"), programs["workers:worker-default"]
    assert new is not None, f"supervisord.conf has no program {WORKER} in group workers: {sorted(programs)}"
    assert new["environment"] == {"WORKER_QUEUES": QUEUE, "WORKER_NAME": QUEUE}
    skip = {"name", "environment", "stdout_logfile", "options", "stdout_capture_maxbytes", "stderr_capture_maxbytes"}
    differ = {key for key in default if key not in skip and new[key] != default[key] and not callable(default[key])}
    assert not differ, f"{WORKER} differs from worker-default in {sorted(differ)}"


@pytest.fixture(scope="module")
def running(recipe: Recipe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    """The recipe's project with its broker servers; not installed: bin/worker runs it from its checkout."""
    work = tmp_path_factory.mktemp(f"recipe-run-{recipe.broker}")
    with serving(recipe.path, recipe.package, [QUEUE], recipe.broker, work) as project:
        yield project


def test_a_task_routed_to_the_new_queue_runs_on_its_worker(recipe: Recipe, running: BootedProject) -> None:
    # The worker as supervisor starts it: bin/worker with the program's environment (and a heartbeat file here).
    program = supervisor_programs(recipe.path / "deploy" / "supervisord.conf")[f"workers:{WORKER}"]
    env = {**program["environment"], "WORKER_HEARTBEAT_FILE": str(running.logs / f"{WORKER}.heartbeat")}
    worker = running.start(WORKER, [str(recipe.path / "bin" / "worker")], env)
    worker.wait_for_log("ready.", timeout=120)
    try:
        _, ran = running.program("call_task", "tasks.exports", "export_orders", ["monthly"], timeout=120)
    except AssertionError as error:
        raise AssertionError(f"{error}\nworker log:\n{services.log_tail(worker.log)}") from None
    print(f"\n{recipe.broker}: export_orders ran: {ran}")
    assert ran["queue"] == QUEUE, ran
    assert ran["worker"].startswith(f"{QUEUE}@"), ran
    assert worker.popen.poll() is None
