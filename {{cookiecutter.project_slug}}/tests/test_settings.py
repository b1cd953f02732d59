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


# Each bad name breaks exactly one rule (a space, a dot, a slash, an upper-case letter).
@pytest.mark.parametrize("name", ["bad queue", "bad.queue", "bad/queue", "BadQueue"])
def test_bad_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=r"must match \[a-z0-9_-\]\+"):
        make(queues=f"default,{name}")


@pytest.mark.parametrize(("queues", "message"), [("", "queue name '' must match"), ("a,a", "list of unique names")])
def test_empty_or_repeated_queue_lists_are_refused(queues: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(queues=queues)


def test_beat_lock_timeout_must_be_at_least_5x_the_loop_interval() -> None:
    with pytest.raises(ValidationError, match=r"CELERY_REDBEAT_LOCK_TIMEOUT \(20\) must be at least 5x"):
        make(beat_max_loop_interval=5.0, redbeat_lock_timeout=20)  # 4x
    assert make(beat_max_loop_interval=5.0, redbeat_lock_timeout=25).redbeat_lock_timeout == 25  # 5x


@pytest.mark.parametrize("name", ["task_max_worker_lost", "dead_letter_max_entries", "dead_letter_retention"])
def test_poison_and_dead_letter_bounds_cannot_be_switched_off(name: str) -> None:
    with pytest.raises(ValidationError, match=f"CELERY_{name.upper()} \\(0\\) must be at least 1"):
        make(**{name: 0})
{%- if cookiecutter.broker == "rabbitmq" %}


def test_poison_bound_stays_below_the_delivery_limit() -> None:
    with pytest.raises(ValidationError, match="must be below the queues' x-delivery-limit"):
        make(task_max_worker_lost=10)
{%- endif %}


def test_dead_letter_redact_keys_read_from_a_comma_separated_variable() -> None:
    assert make(dead_letter_redact_keys="password, email").dead_letter_redact_keys == ["password", "email"]


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        make(timezone="Mars/Olympus")


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        make(environment="production", redis_url="redis://:change-me@redis:6379/0")


def test_placeholder_secret_is_allowed_in_development() -> None:
    assert make(environment="development", redis_url="redis://:change-me@localhost:6379/0").redis_url
