"""Settings validation: bad configuration fails at start with a message that says what to fix."""

from typing import Any

import pytest
from pydantic import ValidationError

from {{ cookiecutter.__package }}.config.settings import Settings

# A self-signed certificate (key thrown away) that only has to parse as a CA file; no connection is made with it.
TEST_CA_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUJDLO8y87uJFokjCzoSYtUt9YYEQwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMdGVzdC1vbmx5LWNhMCAXDTI2MTIwMjExMzU1NloYDzIxMjYx
MTA4MTEzNTU2WjAXMRUwEwYDVQQDDAx0ZXN0LW9ubHktY2EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAQiyCFIOqGlI8lhg8oh6Ci0Gd/y7KAirrGzWSgRzIS1rr/G
eoB4i/VOBDqcqOVpB2MBMJaX7BS2JQemnzHh6N1fo1MwUTAdBgNVHQ4EFgQU6faF
TIq11EOU35eOgRKley1LbrAwHwYDVR0jBBgwFoAU6faFTIq11EOU35eOgRKley1L
brAwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiBV1mIkhGpv9gqX
y0ZpvPhRY1I1dWztyFVaaioz8OzicAIhANGCRZqyxOmSpbompqxnq/5UEF1tRM5f
J08XJxgcasME
-----END CERTIFICATE-----
"""


def make(**overrides: Any) -> Settings:
    # _env_file=None: only what the test passes (and the environment) counts, not the project's .env.
    return Settings(_env_file=None, **overrides)


def test_defaults_follow_the_template_answers() -> None:
    settings = make()
    assert settings.queues == [
{%- for queue in cookiecutter.__queues.split(',') %}
        "{{ queue }}",
{%- endfor %}
    ]
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


# Each bad name breaks exactly one rule (a space, a dot, a slash, an upper-case letter).
@pytest.mark.parametrize("name", ["bad queue", "bad.queue", "bad/queue", "BadQueue"])
def test_bad_queue_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=r"must match \[a-z0-9_-\]\+"):
        make(queues=f"default,{name}")


@pytest.mark.parametrize(("queues", "message"), [("", "queue name '' must match"), ("a,a", "list of unique names")])
def test_empty_or_repeated_queue_lists_are_refused(queues: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(queues=queues)


{%- if cookiecutter.broker == "redis" %}


@pytest.mark.parametrize("name", ["unacked", "deadletters", "redbeat"])
def test_queue_names_of_redis_keys_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=f"queue name '{name}' is a Redis key name"):
        make(queues=f"default,{name}")
{%- endif %}


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


def test_a_bad_sentry_dsn_is_refused_with_where_to_find_the_right_one() -> None:
    with pytest.raises(ValidationError, match=r"SENTRY_DSN is not a Sentry DSN .*Client Keys"):
        make(sentry_dsn="not-a-dsn")


def test_an_empty_sentry_dsn_turns_error_tracking_off() -> None:
    assert make(sentry_dsn="").sentry_dsn is None


def test_sentry_sample_rate_is_a_share() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        make(sentry_sample_rate=2)


def test_placeholder_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="placeholder secret"):
        make(environment="production", redis_url="redis://:change-me@redis:6379/0")


def test_placeholder_secret_is_allowed_in_development() -> None:
    assert make(environment="development", redis_url="redis://:change-me@localhost:6379/0").redis_url


def test_tls_urls_verify_the_server_by_default(tmp_path) -> None:
    import ssl

    ca = tmp_path / "ca.pem"
    ca.write_text(TEST_CA_PEM)
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


# Any ssl* parameter on a TLS URL, whatever it says: the libraries read them differently (redis-py takes "no" as false
# and the first of a repeated key; kombu rebuilds a rediss:// broker's options from the URL alone, dropping the CA and
# the host name check; `?ssl=true` replaces the whole amqps:// option dict).
TLS_URL_PARAMETERS = {
    "ssl_cert_reqs=none": "ssl_cert_reqs",
    "ssl_cert_reqs=CERT_OPTIONAL": "ssl_cert_reqs",
    "ssl_check_hostname=false": "ssl_check_hostname",
    "ssl_check_hostname=no": "ssl_check_hostname",
    "ssl_cert_reqs=none&ssl_cert_reqs=required": "ssl_cert_reqs",
    "ssl_cert_reqs=required": "ssl_cert_reqs",
    "SSL_CA_CERTS=/tmp/ca.pem": "SSL_CA_CERTS",
    "ssl=true": "ssl",
}


@pytest.mark.parametrize("query", sorted(TLS_URL_PARAMETERS))
@pytest.mark.parametrize(
    ("field", "variable", "scheme"),
    [
        ("redis_url", "REDIS_URL", "rediss"),
        ("broker_url", "CELERY_BROKER_URL", "{{ "amqps" if cookiecutter.broker == "rabbitmq" else "rediss" }}"),
        ("result_backend", "CELERY_RESULT_BACKEND", "rediss"),
        ("redbeat_redis_url", "CELERY_REDBEAT_REDIS_URL", "rediss"),
    ],
)
def test_tls_url_with_ssl_parameters_is_refused(query: str, field: str, variable: str, scheme: str) -> None:
    urls = {field: f"{scheme}://:s3cret-password@db.example.com:6380/0?{query}"}
    with pytest.raises(ValidationError) as refused:
        make(**{"redis_url": "rediss://db.example.com:6380/0", **urls})
    message = str(refused.value)
    assert f"{variable} has the URL parameter {TLS_URL_PARAMETERS[query]!r}" in message
    assert "TLS options come from CELERY_SSL_CA_CERTS" in message and "CELERY_SSL_INSECURE_SKIP_VERIFY=true" in message
    assert "s3cret-password" not in message


def test_each_url_of_a_failover_list_is_checked() -> None:
    with pytest.raises(ValidationError, match="REDIS_URL has the URL parameter 'ssl_check_hostname'"):
        make(redis_url="rediss://a.example.com:6380/0;rediss://b.example.com:6380/0?ssl_check_hostname=no")


def test_plain_urls_may_carry_ssl_named_parameters() -> None:
    # redis:// and amqp:// do not speak TLS: their parameters are not TLS options, so they are left alone.
    assert make(redis_url="redis://localhost:6379/0?ssl_cert_reqs=none").redis_url


def test_settings_errors_do_not_show_secrets() -> None:
    # pydantic puts the refused input into its error (and str() of it): a URL or password must never reach a log.
    with pytest.raises(ValidationError) as refused:
        make(environment="production", redis_url="rediss://:hunter2-hunter2-hunter2@db.example.com:6380/0?ssl=1")
    assert "hunter2" not in str(refused.value) and "hunter2" not in repr(refused.value)
    with pytest.raises(ValidationError) as refused:
        make(task_time_limit="hunter2-hunter2")
    assert "hunter2" not in str(refused.value)


def test_verification_off_only_with_the_loud_setting() -> None:
    import ssl

    settings = make(redis_url="rediss://redis.example.com:6380/0?ssl_cert_reqs=none", ssl_insecure_skip_verify=True)
    tls = settings.redis_ssl(settings.redis_url)
    assert tls is not None and tls["ssl_cert_reqs"] == ssl.CERT_NONE


def test_missing_ca_bundle_is_refused(tmp_path) -> None:
    with pytest.raises(ValidationError, match=r"CELERY_SSL_CA_CERTS .* is not a file"):
        make(redis_url="rediss://redis.example.com:6380/0", ssl_ca_certs=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize("content", [b"", b"0\x82\x01\x0a\x02\x82\x01\x01\x00", b"-----BEGIN CERTIFICATE-----\n"])
def test_a_ca_bundle_without_pem_certificates_is_refused(tmp_path, content: bytes) -> None:
    # Empty, DER (binary) or cut short: every TLS connection would fail later with a less clear error.
    ca = tmp_path / "ca.pem"
    ca.write_bytes(content)
    with pytest.raises(ValidationError, match=r"CELERY_SSL_CA_CERTS .* holds no usable PEM certificate"):
        make(redis_url="rediss://redis.example.com:6380/0", ssl_ca_certs=str(ca))


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
    from {{ cookiecutter.__package }}.config.settings import settings

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
            connection.default_channel.queue_delete(name)  # type: ignore[attr-defined]  # stubs: StdChannel
{%- endif %}
