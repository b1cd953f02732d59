"""Unit tests of the hooks, called as functions (the rendered hook runs `main` with the answers)."""

import io
import json
import os
import stat
from pathlib import Path

import pytest
from template import PLACEHOLDER, load_hook

pre = load_hook("pre_gen_project")
post = load_hook("post_gen_project")
GOOD = {
    "project_slug": "acme-jobs",
    "__package": "acme_jobs",
    "queues": "default,high,low",
    "timezone": "UTC",
    "broker": "redis",
}


def test_good_answers_pass() -> None:
    assert pre.validate(GOOD) == []
    assert pre.main(GOOD) == 0


def test_spaces_around_queue_names_are_allowed() -> None:
    assert pre.validate({**GOOD, "queues": "default, high , low"}) == []


def test_key_names_are_queue_names_with_rabbitmq() -> None:
    # Queues live in RabbitMQ there, not under the Redis key prefix.
    assert pre.validate({**GOOD, "broker": "rabbitmq", "queues": "default,unacked,deadletters"}) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"project_slug": "Acme"}, "must match [a-z][a-z0-9-]*"),
        ({"__package": "acme-jobs"}, "must be a valid Python identifier"),
        ({"__package": "class"}, "would shadow"),
        ({"__package": "asyncio"}, "would shadow"),
        ({"queues": "a,b,a"}, "lists a more than once"),
        ({"queues": " "}, "empty name"),
        ({"queues": "default,amq.direct"}, "must match"),
        ({"queues": "default,unacked_index"}, "is a Redis key name"),
        ({"queues": "default,redbeat"}, "is a Redis key name"),
        ({"timezone": "Europe/Atlantis"}, "not an IANA time zone"),
        ({"timezone": "../etc/passwd"}, "not an IANA time zone"),
    ],
)
def test_bad_answers_are_refused_with_a_reason(change: dict, message: str, capsys: pytest.CaptureFixture) -> None:
    answers = {**GOOD, **change}
    assert any(message in error for error in pre.validate(answers))
    assert pre.main(answers) == 1
    assert message in capsys.readouterr().err


def test_unsupported_combination_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pre, "UNSUPPORTED", [({"broker": "redis"}, "redis cannot do X")])
    assert pre.validate(GOOD) == ["redis cannot do X"]


def test_env_gets_fresh_secrets_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / ".env.example").write_text(
        f"# PASSWORD={PLACEHOLDER}\nA={PLACEHOLDER}\nB=keep\nC=admin:{PLACEHOLDER}\n"
    )
    env = post.write_env(tmp_path).read_text().splitlines()
    assert env[0] == f"# PASSWORD={PLACEHOLDER}" and env[2] == "B=keep" and env[3].startswith("C=admin:")
    secrets = [env[1].split("=", 1)[1], env[3].split(":", 1)[1]]
    assert post.PLACEHOLDER not in secrets and len(set(secrets)) == 2 and all(len(s) >= 32 for s in secrets)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


class _Watched:
    """A file object that records the file's mode each time data is written to it."""

    def __init__(self, file, modes: list[int]) -> None:
        self._file, self._modes = file, modes

    def write(self, data):
        self._modes.append(stat.S_IMODE(os.fstat(self._file.fileno()).st_mode))
        return self._file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._file.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-a-readable-env"])
def test_env_secrets_are_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    """The mode is 0600 when the secrets are written, not only afterwards (a usual umask 022 would give 0644)."""
    (tmp_path / ".env.example").write_text(f"A={PLACEHOLDER}\n")
    if existing:  # a re-run over an .env someone made world-readable
        (tmp_path / ".env").write_text("old\n")
        (tmp_path / ".env").chmod(0o644)
    modes: list[int] = []
    real_open, real_fdopen = io.open, os.fdopen

    def watched_open(file, *args, **kwargs):
        opened = real_open(file, *args, **kwargs)
        return _Watched(opened, modes) if str(file).endswith(".env") else opened

    monkeypatch.setattr(io, "open", watched_open)
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _Watched(real_fdopen(fd, *a, **k), modes))
    old_umask = os.umask(0o022)
    try:
        post.write_env(tmp_path)
    finally:
        os.umask(old_umask)
    assert modes and set(modes) == {0o600}, [oct(m) for m in modes]
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_only_empty_directories_are_removed(tmp_path: Path) -> None:
    (tmp_path / "deploy" / "k8s" / "base").mkdir(parents=True)
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("x")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in post.remove_empty_dirs(tmp_path)) == [
        "deploy",
        "deploy/k8s",
        "deploy/k8s/base",
    ]
    assert (tmp_path / "keep" / "file").exists()


def test_bundles_are_split_into_their_files(tmp_path: Path) -> None:
    workers = tmp_path / "deploy" / "k8s" / "base" / "workers"
    workers.mkdir(parents=True)
    (workers / "queues.bundle").write_text(
        "\n#@ file: default/kustomization.yaml\n# default\nnameSuffix: -default\n"
        "#@ file: bulk_jobs/kustomization.yaml\nnameSuffix: -bulk-jobs\n\n"
    )
    written = post.split_bundles(tmp_path)
    assert sorted(p.relative_to(workers).as_posix() for p in written) == [
        "bulk_jobs/kustomization.yaml",
        "default/kustomization.yaml",
    ]
    assert (workers / "default" / "kustomization.yaml").read_text() == "# default\nnameSuffix: -default\n"
    assert (workers / "bulk_jobs" / "kustomization.yaml").read_text() == "nameSuffix: -bulk-jobs\n"
    assert not (workers / "queues.bundle").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stray\n#@ file: a.yaml\nx\n", "text before the first"),
        ("#@ file: ../a.yaml\nx\n", "outside its directory"),
        ("#@ file: a.yaml\nx\n#@ file: a.yaml\ny\n", "or twice"),
    ],
)
def test_a_bad_bundle_stops_with_its_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.bundle").write_text(text)
    with pytest.raises(SystemExit, match=message):
        post.split_bundles(tmp_path)


def test_answers_are_recorded_without_machine_paths_or_the_template_commit(tmp_path: Path) -> None:
    # _commit: cruft's, different at every template commit (tests/fast/test_update.py shows why it must stay out).
    context = {"project_name": "X", "__package": "x", "_template": "gh:org/t", "_output_dir": "/home/me/src"}
    context["_commit"] = "0123abcd" * 5
    recorded = json.loads(post.record_answers(tmp_path, context).read_text())
    assert recorded == {"cookiecutter": {"project_name": "X", "__package": "x", "_template": "gh:org/t"}}
