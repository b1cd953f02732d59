"""Settings validation: bad configuration fails at start with a message that says what to fix."""

import pytest
from pydantic import ValidationError

from {{ cookiecutter.__package }}.settings import Settings


def make(**overrides: object) -> Settings:
    # _env_file=None: only what the test passes (and the environment) counts, not the project's .env.
    return Settings(_env_file=None, **overrides)


def test_defaults_follow_the_template_answers() -> None:
    settings = make()
    assert settings.queues == {{ cookiecutter.__queues.split(',') | tojson }}
    assert settings.timezone == "{{ cookiecutter.timezone }}"


def test_visibility_timeout_covers_countdown_and_time_limit() -> None:
    settings = make(max_countdown=600, task_time_limit=120, task_soft_time_limit=100)
    assert settings.visibility_timeout > 600 + 120


def test_too_short_visibility_timeout_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="must exceed CELERY_MAX_COUNTDOWN"):
        make(environment="production", visibility_timeout=60, redis_url="redis://:s3cret@redis:6379/0")


def test_soft_limit_must_be_below_hard_limit() -> None:
    with pytest.raises(ValidationError, match="must be above 0 and below"):
        make(task_soft_time_limit=300, task_time_limit=300)


@pytest.mark.parametrize("queues", ["", "a,a", "Bad Queue"])
def test_bad_queue_lists_are_refused(queues: str) -> None:
    with pytest.raises(ValidationError):
        make(queues=queues)


{%- if cookiecutter.broker == "redis" %}


@pytest.mark.parametrize("name", ["unacked", "deadletters", "redbeat"])
def test_queue_names_of_redis_keys_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"queue name '{name}' is a Redis key name"):
        make(queues=f"default,{name}")
{%- endif %}


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        make(timezone="Mars/Olympus")


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        make(environment="production", redis_url="redis://:change-me@redis:6379/0")


def test_placeholder_secret_is_allowed_in_development() -> None:
    assert make(environment="development", redis_url="redis://:change-me@localhost:6379/0").redis_url


@pytest.mark.parametrize("prefix", ["", "acme:jobs", "acme jobs"])
def test_bad_key_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="CELERY_KEY_PREFIX"):
        make(key_prefix=prefix)


def test_results_and_broker_keys_carry_the_key_prefix() -> None:
    """Keys as Redis stores them (an unprefixed client on the test Redis): a result{% if cookiecutter.broker == "redis" %} and a message kombu published{% endif %}."""
    import os
    import uuid

    import redis

    from {{ cookiecutter.__package }}.celery_app import app
    from {{ cookiecutter.__package }}.settings import settings

    prefix = f"{settings.key_prefix}:"
    db = redis.Redis.from_url(os.environ["REDIS_URL"])
    task_id = f"prefix-check-{uuid.uuid4().hex}"
    app.backend.store_result(task_id, 42, "SUCCESS")
    try:
        assert db.exists(f"{prefix}celery-task-meta-{task_id}") == 1
        assert db.exists(f"celery-task-meta-{task_id}") == 0
    finally:
        app.backend.forget(task_id)
{%- if cookiecutter.broker == "redis" %}
    from kombu import Exchange, Queue

    name = f"prefix-check-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with app.connection_for_write() as connection:
        connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])
        try:
            assert db.llen(f"{prefix}{name}") == 1
            assert db.exists(name, f"_kombu.binding.{name}") == 0
        finally:
            connection.default_channel.queue_delete(name)
{%- endif %}
