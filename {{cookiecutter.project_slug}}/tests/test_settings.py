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


def test_visibility_timeout_covers_countdown_prefetch_wait_and_time_limit() -> None:
    settings = make(max_countdown=600, task_time_limit=120, task_soft_time_limit=100, max_prefetch_multiplier=4)
    # The countdown, four runs ahead of it in the worker's buffer, and its own run.
    assert settings.visibility_timeout > 600 + 4 * 120 + 120


def test_a_prefetch_above_the_sized_maximum_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not exceed CELERY_MAX_PREFETCH_MULTIPLIER"):
        make(worker_prefetch_multiplier=8, max_prefetch_multiplier=4)
{%- if cookiecutter.broker == "rabbitmq" %}


def test_consumer_timeout_must_outlast_the_prefetch_wait_and_the_run_outside_development() -> None:
    with pytest.raises(ValidationError, match=r"CELERY_CONSUMER_TIMEOUT \(1800.*must exceed"):
        make(
            environment="production",
            task_time_limit=600,
            task_soft_time_limit=500,
            redis_url="redis://:s3cret@redis:6379/0",
            broker_url="amqp://u:s3cret@rabbitmq:5672/",
        )


def test_max_countdown_stays_within_native_delayed_delivery() -> None:
    with pytest.raises(ValidationError, match=r"below 2\*\*28 s"):
        make(max_countdown=2**28)
{%- endif %}


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


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        make(timezone="Mars/Olympus")


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        make(environment="production", redis_url="redis://:change-me@redis:6379/0")


def test_placeholder_secret_is_allowed_in_development() -> None:
    assert make(environment="development", redis_url="redis://:change-me@localhost:6379/0").redis_url
