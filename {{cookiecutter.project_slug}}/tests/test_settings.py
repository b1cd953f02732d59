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


def test_visibility_timeout_covers_countdown_everything_held_and_the_run() -> None:
    settings = make(
        max_countdown=600,
        task_time_limit=120,
        task_soft_time_limit=100,
        max_prefetch_multiplier=4,
        worker_eta_task_limit=16,
        min_worker_concurrency=2,
    )
    # The countdown; 16 ETA tasks fallen due together (prefetch count raised to the limit), run 2 at a time: 8 runs,
    # one more already going; the 60 s margin.
    assert settings.visibility_timeout == 600 + (8 + 1) * 120 + 60


def test_visibility_timeout_below_the_rule_is_refused_at_the_rule_and_accepted_above() -> None:
    limits = dict(max_countdown=10, task_time_limit=2, task_soft_time_limit=1, worker_eta_task_limit=3)
    # 10 + (ceil(max(3, 4 x 1) / 1) + 1) x 2 + 60 = 80
    production = dict(environment="production", redis_url="redis://:s3cret@redis:6379/0", **limits)
    with pytest.raises(ValidationError, match=r"CELERY_VISIBILITY_TIMEOUT \(79\) must be at least 80: "):
        make(visibility_timeout=79, **production)
    assert make(visibility_timeout=80, **production).visibility_timeout == 80


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
    with pytest.raises(ValidationError, match=r"must be at least \d+: CELERY_MAX_COUNTDOWN"):
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
