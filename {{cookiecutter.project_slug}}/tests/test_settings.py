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


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an IANA time zone"):
        make(timezone="Mars/Olympus")


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        make(environment="production", redis_url="redis://:change-me@redis:6379/0")


def test_placeholder_secret_is_allowed_in_development() -> None:
    assert make(environment="development", redis_url="redis://:change-me@localhost:6379/0").redis_url


def test_tls_urls_verify_the_server_by_default(tmp_path) -> None:
    import ssl

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = make(redis_url="rediss://:s3cret@redis.example.com:6380/0", ssl_ca_certs=str(ca))
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": str(ca), "ssl_check_hostname": True}
    assert settings.redis_ssl(settings.redis_url) == expected
{%- if cookiecutter.broker == "rabbitmq" %}
    amqps = make(broker_url="amqps://celery:s3cret@rabbitmq.example.com:5671/vhost")
    # server_hostname None: kombu fills in the URL's host, so py-amqp checks the certificate's host name too.
    assert amqps.broker_use_ssl == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": None, "server_hostname": None}
{%- else %}
    assert settings.broker_use_ssl == expected
{%- endif %}


def test_plain_urls_get_no_tls_options() -> None:
    # TLS options would switch a redis:// connection to TLS in kombu and Celery's result backend.
    settings = make(redis_url="redis://localhost:6379/0")
    assert settings.redis_ssl(settings.redis_url) is None
{%- if cookiecutter.broker == "redis" %}
    assert settings.broker_use_ssl is None
{%- endif %}


@pytest.mark.parametrize("query", ["ssl_cert_reqs=none", "ssl_cert_reqs=CERT_OPTIONAL", "ssl_check_hostname=false"])
def test_tls_url_with_verification_off_is_refused(query: str) -> None:
    with pytest.raises(ValidationError, match=r"REDIS_URL turns TLS verification off .*INSECURE_SKIP_VERIFY=true"):
        make(redis_url=f"rediss://redis.example.com:6380/0?{query}")


def test_verification_off_only_with_the_loud_setting() -> None:
    import ssl

    settings = make(redis_url="rediss://redis.example.com:6380/0?ssl_cert_reqs=none", ssl_insecure_skip_verify=True)
    assert settings.redis_ssl(settings.redis_url)["ssl_cert_reqs"] == ssl.CERT_NONE


def test_missing_ca_bundle_is_refused(tmp_path) -> None:
    with pytest.raises(ValidationError, match=r"CELERY_SSL_CA_CERTS .* is not a file"):
        make(redis_url="rediss://redis.example.com:6380/0", ssl_ca_certs=str(tmp_path / "missing.pem"))
