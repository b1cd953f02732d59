# The template's two everyday commands (see README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
# Four pytest processes on 2 cores: boot tests mostly wait on servers and workers. --dist loadscope keeps each module
# on one process, so a module's stack (and the compose tier's dockerd) is set up once; the session `booted` project is
# named per process (tests/conftest.py). --no-loadscope-reorder: modules go out in collection order, the longest first
# (tests/conftest.py, LONGEST_FIRST), not by their number of tests.
PYTEST_JOBS ?= 4

.PHONY: help bootstrap demo test test-fast lint lock clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

bootstrap:  ## install redis-server/rabbitmq-server if missing, create .venv with the dev requirements
	PYTHON=$(PYTHON) VENV=$(VENV) tools/bootstrap.sh

demo: bootstrap  ## render a project into build/demo, boot Redis and a worker per queue, run a task on each queue
	$(VENV)/bin/python tools/demo.py $(ARGS)

test: bootstrap  ## every test: hooks, render matrix, and the boot tier against real servers
	$(VENV)/bin/python -m pytest -n $(PYTEST_JOBS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: bootstrap  ## hooks and render matrix only (seconds)
	$(VENV)/bin/python -m pytest -m "not boot" $(PYTEST_ARGS)

lint: bootstrap  ## ruff on the template's own code
	$(VENV)/bin/ruff check hooks tests tools
	$(VENV)/bin/ruff format --check hooks tests tools

lock:  ## re-lock the generated project's uv.lock per dependency variant (ARGS=--upgrade: newest pins)
	TOOLS_ONLY=1 PYTHON=$(PYTHON) VENV=$(VENV) tools/bootstrap.sh
	$(VENV)/bin/python tools/lock.py $(ARGS)
	PYTHON=$(PYTHON) VENV=$(VENV) tools/bootstrap.sh

clean:  ## remove rendered demos and caches
	rm -rf build .pytest_cache .ruff_cache
