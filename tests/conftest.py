"""Fixtures shared by the boot-tier modules: one rendered, installed and running project per broker, per session."""

from collections.abc import Iterator

import pytest
import services
from booted import BootedProject, install, project_env, read_answers, uninstall
from template import CHOICES, render


@pytest.fixture(scope="session", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def booted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    broker = request.param
    services.require("redis-server")
    if broker == "rabbitmq":
        services.require("rabbitmq-server")
    work = tmp_path_factory.mktemp(f"boot-{broker}")
    # A distinct name per variant, so both can be installed into the one shared environment.
    path = render(work, {"project_name": f"Boot {broker}", "broker": broker})
    answers = read_answers(path)
    install(path)
    started: list[services.Service] = []
    project = None
    try:
        redis = services.start_redis(work / "redis")
        started.append(redis)
        broker_url = None
        if broker == "rabbitmq":
            rabbit = services.start_rabbitmq(work / "rabbitmq")
            started.append(rabbit)
            broker_url = rabbit.url
        logs = work / "logs"
        logs.mkdir()
        queues = [q.strip() for q in answers["queues"].split(",")]
        env = project_env(path, redis.url, broker_url)
        project = BootedProject(path, answers["__package"], queues, env, logs, services=started)
        for queue in queues:
            project.start_worker(queue)
        for proc in project.procs:
            proc.wait_for_log("ready.")
        yield project
    finally:
        if project:
            project.stop_all()
        for service in reversed(started):
            service.stop()
        uninstall(answers["project_slug"])
