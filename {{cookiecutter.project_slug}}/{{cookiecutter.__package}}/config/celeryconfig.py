"""Celery configuration: Celery's own lowercase setting names, values from settings.py.

Loaded by `app.config_from_object`. Every value that differs from Celery's default says why.
Reference: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

from .queues import DEFAULT_EXCHANGE, DEFAULT_QUEUE, TASK_QUEUES, TASK_ROUTES
from .schedule import beat_schedule as _beat_schedule
from .settings import settings

broker_url = settings.broker_url
result_backend = settings.result_backend
# TLS for rediss:// and amqps:// (settings.py): the server certificate is verified against CELERY_SSL_CA_CERTS (or
# the system CAs) and must name the URL's host. Without these, kombu connects to rediss:// with CERT_NONE, Celery's
# result backend refuses rediss:// at start, and py-amqp checks amqps:// certificates without their host name.
# None for plain URLs: these options switch a redis:// connection to TLS in kombu and Celery's backend.
broker_use_ssl = settings.broker_use_ssl
redis_backend_use_ssl = settings.redis_ssl(settings.result_backend)
# Retry the broker connection at start instead of exiting, so a worker started before its broker waits for it.
broker_connection_retry_on_startup = True
# None: keep retrying while the broker is away (a worker that gives up becomes a crash loop in the orchestrator).
broker_connection_max_retries = None
# Celery's consumer plus heartbeat touches while it waits for the broker: the liveness probe keeps a worker that is
# reconnecting (it resumes by itself) and still restarts one whose main loop is stuck (worker_steps.py).
worker_consumer = "{{ cookiecutter.__package }}.runtime.worker_steps:HeartbeatConsumer"
{%- if cookiecutter.broker == "rabbitmq" %}
broker_transport_options = {
    # Publisher confirms: `delay()` returns only once RabbitMQ has the message, so a broker crash loses nothing sent.
    "confirm_publish": True,
}
# Quorum queues are replicated and survive a node loss; classic mirrored queues are deprecated.
# https://docs.celeryq.dev/en/stable/userguide/configuration.html#task-default-queue-type
task_default_queue_type = "quorum"
# Quorum queues do not support global QoS; Celery detects them and uses per-consumer prefetch instead.
worker_detect_quorum_queues = True
# Native delayed delivery (Celery 5.5+, on with quorum queues): a countdown/ETA task waits in RabbitMQ's delay queues
# and reaches a worker when it is due, instead of waiting unacknowledged in a worker (blocking a prefetch-1 worker and
# running into consumer_timeout). It needs topic exchanges (queues.py); the delay queues are quorum queues too.
# https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/rabbitmq.html#using-quorum-queues
broker_native_delayed_delivery_queue_type = "quorum"
task_default_exchange_type = "topic"
# A task running when the RabbitMQ connection drops finishes instead of being killed. Its ack cannot reach RabbitMQ
# (the channel is gone), which redelivers the message at once: idempotent tasks find their claim busy, retry, and skip
# once the first run marked it done. Cancelling (Celery 6's default) would kill the first run mid-effect, after which
# nothing can tell whether the effect happened, and the redelivery would act again. Tasks without a claim say why a
# re-run is harmless (tasks/*.py).
worker_cancel_long_running_tasks_on_connection_loss = False
{%- else %}
# None: redis:// URLs use kombu's Redis transport plus one fix, so a worker survives a Redis restart mid-task
# (redis_transport.py, registered in celery_app.py).
broker_transport = settings.broker_transport
# A task running when the Redis connection drops finishes instead of being killed. Its message comes back while it
# runs (kombu puts the unacknowledged messages of the lost channel back in the queue as it closes it; failing that,
# after visibility_timeout): idempotent tasks find their claim busy, retry, and skip once the first run marked it done;
# the others say why a re-run is harmless (tasks/*.py). Cancelling (Celery 6's default) would kill the first run
# mid-effect, after which nothing can tell whether the effect happened, and the redelivery would act again. Pinned
# here (Celery still warns about it at each connection loss).
worker_cancel_long_running_tasks_on_connection_loss = False
broker_transport_options = {
    # See the rule in settings.py: above the longest countdown plus the hard time limit.
    "visibility_timeout": settings.visibility_timeout,
    # "<CELERY_KEY_PREFIX>:" before every key and channel kombu uses: queue lists, unacked, the _kombu.binding.* tables
    # and the broadcast channels of remote control (shutdown, revoke) and events. Without it, projects sharing a Redis
    # database consume each other's tasks and obey each other's broadcasts. KEDA's listName carries it too (deploy/k8s).
    "global_keyprefix": settings.global_keyprefix,
    # The rule (settings.py): one connection attempt is shorter than the heartbeat stale limit. kombu's default None
    # lets a blackholed Redis hold the worker's reconnection loop in one attempt until liveness restarts it.
    "socket_connect_timeout": settings.redis_socket_connect_timeout,
    # Above the BRPOP timeout (1 s): kombu reads BRPOP replies only once the socket is readable, and Redis answers
    # within that timeout even with no message, so an idle consumer never hits this.
    "socket_timeout": settings.redis_socket_timeout,
}
{%- endif %}

# Routing: declared queues only. A route or `queue=` naming an undeclared queue raises instead of creating a queue
# that no worker consumes.
task_queues = TASK_QUEUES
task_default_queue = DEFAULT_QUEUE
task_default_exchange = DEFAULT_EXCHANGE
task_default_routing_key = DEFAULT_QUEUE
task_routes = TASK_ROUTES
task_create_missing_queues = False

# At-least-once delivery: acknowledge after the task finishes, so a worker that dies mid-task leaves the message to be
# redelivered. Tasks must therefore be idempotent (see tasks/notifications.py).
# https://docs.celeryq.dev/en/stable/faq.html#faq-acks-late-vs-retry
task_acks_late = True
# ...and also when the pool process running it dies (OOM kill, segfault), not only when the whole worker dies: the
# message goes back to the queue instead of being acknowledged as failed. Bounded: after CELERY_TASK_MAX_WORKER_LOST
# losses in a row the task is dead-lettered instead of run (deadletters.py), on both brokers. Not the hard time
# limit: Celery 5.7 acknowledges a task that hits it (task_acks_on_timeout) and runs on_failure: dead-lettered at once.
# Not Celery's task_retry_on_worker_lost: it spends the task's max_retries (shared with ordinary retries, unbounded
# when None) and misses a whole worker lost; our counter sees every redelivered start and records the reason.
task_reject_on_worker_lost = True
task_soft_time_limit = settings.task_soft_time_limit
task_time_limit = settings.task_time_limit
# Results are opt-in per task: storing STARTED and the result costs two Redis writes and publishes per task in the
# pool process (throughput cost: README "Performance", `make bench ARGS=--settings`). A task whose caller reads
# its result, or that is part of a chord, says `ignore_result=False` (tasks/*.py); the rest store nothing.
task_ignore_result = True
# For the tasks that do store results: report STARTED so callers and Flower can tell "queued" from "running".
task_track_started = True
# An errback linked to a chord also runs for a failing header task, at once, instead of only after the chord gives up.
# Celery's future default; set now so behaviour does not change under you on upgrade.
task_allow_error_cb_on_chord_header = True

# JSON only: pickle would let anyone who can publish to the broker run code in the worker.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]
result_expires = settings.result_expires
# "<CELERY_KEY_PREFIX>:celery-task-meta-<id>": results (and their pub/sub channels) of projects sharing a Redis apart.
result_backend_transport_options = {"global_keyprefix": settings.global_keyprefix}
# The result backend's Redis connection, bounded by the same rule (settings.py); Celery's defaults are None and 120 s.
redis_socket_connect_timeout = settings.redis_socket_connect_timeout
redis_socket_timeout = settings.redis_socket_timeout

# Set per worker from its queue's profile in celery_app.py unless CELERY_WORKER_PREFETCH_MULTIPLIER overrides it.
worker_prefetch_multiplier = settings.worker_prefetch_multiplier or 1
worker_max_tasks_per_child = settings.worker_max_tasks_per_child
worker_max_memory_per_child = settings.worker_max_memory_per_child
worker_soft_shutdown_timeout = settings.worker_soft_shutdown_timeout
# Bounds how many countdown/ETA tasks one worker keeps in memory (settings.py says why).
worker_eta_task_limit = settings.worker_eta_task_limit
# Task events (three messages per task, from the worker's main process) stay off: they cost the worker throughput
# (README "Performance"). bin/metrics reads counters the workers keep in Redis instead (runtime/counters.py).
# bin/flower does not turn them on (FLOWER_ENABLE_EVENTS, flowerconfig.py): Flower's own default broadcasts
# `enable_events` every 5 s, and every worker would send events from then until it restarts.
worker_send_task_events = settings.worker_send_task_events

timezone = settings.timezone
# Store and compare times in UTC; `timezone` only decides how crontab entries are read.
enable_utc = True

# Beat: RedBeat keeps the schedule, each entry's last run and a lock in Redis. No schedule file on disk, and a second
# beat started by mistake (or as a standby) waits for the lock instead of sending every task twice.
# https://github.com/sibson/redbeat
beat_scheduler = "{{ cookiecutter.__package }}.runtime.beat_scheduler:Scheduler"
beat_schedule = _beat_schedule()
redbeat_redis_url = settings.redbeat_redis_url
# RedBeat's own TLS options (it falls back to broker_use_ssl, which for RabbitMQ holds py-amqp's, not redis-py's).
redbeat_redis_use_ssl = settings.redis_ssl(settings.redbeat_redis_url)
# Set explicitly: otherwise RedBeat falls back to broker_transport_options (deprecated) and warns at every start.
# The socket timeouts: without them a tick on an unresponsive Redis blocks until the beat probe restarts the pod.
redbeat_redis_options = {
    "health_check_interval": 30,
    "socket_connect_timeout": settings.redis_socket_connect_timeout,
    "socket_timeout": settings.redis_socket_timeout,
}
redbeat_key_prefix = settings.redbeat_key_prefix
# Chosen together (see settings.py): the lock outlives >= 5 loop intervals; a standby takes over within
# redbeat_lock_timeout + beat_max_loop_interval of the active beat dying.
beat_max_loop_interval = settings.beat_max_loop_interval
redbeat_lock_timeout = settings.redbeat_lock_timeout
