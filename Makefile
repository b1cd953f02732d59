# The template's two everyday commands (see README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# Four pytest processes on 2 cores: boot tests mostly wait on servers and workers (tests/conftest.py keeps the tests
# of one boot module on one process).
PYTEST_JOBS ?= 4

.PHONY: help bootstrap demo test test-fast lint clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

bootstrap:  ## install redis-server/rabbitmq-server if missing, create .venv with the dev requirements
	PYTHON=$(PYTHON) VENV=$(VENV) tools/bootstrap.sh

demo: bootstrap  ## render a project into build/demo, boot Redis and a worker per queue, run a task on each queue
	$(VENV)/bin/python tools/demo.py $(ARGS)

test: bootstrap  ## every test: hooks, render matrix, and the boot tier against real servers
	$(VENV)/bin/python -m pytest -n $(PYTEST_JOBS) --dist loadgroup $(PYTEST_ARGS)

test-fast: bootstrap  ## hooks and render matrix only (seconds)
	$(VENV)/bin/python -m pytest -m "not boot" $(PYTEST_ARGS)

lint: bootstrap  ## ruff on the template's own code
	$(VENV)/bin/ruff check hooks tests tools
	$(VENV)/bin/ruff format --check hooks tests tools

clean:  ## remove rendered demos and caches
	rm -rf build .pytest_cache .ruff_cache
