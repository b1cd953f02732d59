"""Upgrading a deployment to the prefixed broker key layout: messages queued by the old layout still run.

The incident: before CELERY_KEY_PREFIX reached kombu (global_keyprefix), waiting messages sat in "default" (and
"default\\x06\\x16<step>" for priority tasks) and delivered-but-unacknowledged ones in the `unacked` hash. A worker of
the new layout reads only "<prefix>:default": the old messages never run, and `ops queues` reports 0. Here a producer
with the old layout queues tasks (two with a priority) and a consumer takes one without acknowledging it and dies;
then a new worker starts (and warns), `ops migrate-keys` moves the keys, and every task runs on the new worker.
"""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from booted import BootedProject, running_project
from services import eventually

pytestmark = pytest.mark.boot

OLD = [f"old-{i}" for i in range(3)]
PRIORITY = [f"priority-{i}" for i in range(2)]
COMMAND = "migrate-keys"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    with running_project(tmp_path_factory.mktemp("migrate"), "Key Upgrade", "redis", workers=False) as booted:
        yield booted


def runs(db: redis.Redis, project: BootedProject) -> list[str]:
    return [json.loads(entry)["key"] for entry in db.lrange(f"{project.package}:diagnostics:runs", 0, -1)]


def test_messages_of_the_unprefixed_layout_run_after_migrate_keys(project: BootedProject) -> None:
    db = redis.Redis.from_url(project.service("redis").url, decode_responses=True)
    # The old deployment: the same code without the broker's key prefix. One message is delivered and never
    # acknowledged (its consumer exits without a shutdown), so it sits in the old `unacked` hash.
    project.program("legacy_messages", OLD, PRIORITY)
    old_keys = sorted(k for k in db.scan_iter() if not k.startswith(f"{project.package}:"))
    queues_before = project.module("ops", "queues").stdout

    worker = project.start_worker("default")
    worker.wait_for_log("ready.")
    worker.wait_for_log(COMMAND, timeout=30)  # the warning comes from worker_ready, just after "ready."
    warnings = [line for line in worker.log.read_text().splitlines() if COMMAND in line]
    time.sleep(2)  # the worker is consuming: had it seen the old lists, tasks would run now
    ran_before = runs(db, project)

    dry = project.module("ops", COMMAND, "--dry-run")
    kept_by_dry_run = sorted(k for k in db.scan_iter() if not k.startswith(f"{project.package}:"))
    migrated = project.module("ops", COMMAND)
    all_ran = eventually(lambda: sorted(runs(db, project)) == sorted(OLD + PRIORITY), timeout=90)
    again = project.module("ops", COMMAND)
    left = sorted(k for k in db.scan_iter() if not k.startswith(f"{project.package}:"))

    print()
    print(f"  unprefixed keys after the old producer: {old_keys}")
    print("  ops queues before migrate-keys:", " | ".join(queues_before.splitlines()))
    print(f"  worker warnings naming {COMMAND}: {len(warnings)}: {warnings[:1]}")
    print(f"  ran before migrate-keys: {ran_before}")
    print("  --dry-run:", *dry.stdout.splitlines(), sep="\n    ")
    print(f"  {COMMAND}:", *migrated.stdout.splitlines(), sep="\n    ")
    print(f"  ran after: {sorted(runs(db, project))}")
    print(f"  second run: {again.stdout.strip()}")
    print(f"  unprefixed keys left: {left}")

    assert {"default", "default\x06\x169", "unacked"} <= set(old_keys)
    assert len(warnings) == 1, Path(worker.log).read_text()[-3000:]
    assert ran_before == []
    assert dry.returncode == 0 and kept_by_dry_run == old_keys, dry.stderr
    assert migrated.returncode == 0, migrated.stderr
    assert "requeued 1 unacknowledged message(s) from 'unacked' to" in migrated.stdout
    assert all_ran, worker.log.read_text()[-3000:]
    assert again.returncode == 0 and again.stdout.startswith("nothing to migrate"), again.stdout + again.stderr
    assert not {"default", "default\x06\x169", "unacked", "unacked_index", "_kombu.binding.default"} & set(left)
