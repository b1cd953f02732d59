"""The Celery project package: settings, queues, tasks, and the tools to run them (see README.md)."""
