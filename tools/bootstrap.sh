#!/usr/bin/env bash
# Install what the demo and the tests need on a fresh Debian/Ubuntu machine, then the Python environment.
# Idempotent: installs only what is missing. Called by `make demo` and `make test`.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v rabbitmq-server >/dev/null || [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
# The alert rules' tests and the Prometheus boot tier: the server and promtool (one package).
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
"$PYTHON" -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
# Not docker.io: the compose boot tier uses the Docker engine you run, or, as root and only when that tier runs,
# installs docker.io and debootstrap and starts a dockerd of its own
# (tests/support/docker_env.py). Without either it is skipped.
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        echo "missing: ${missing[*]}; install them with apt-get (needs root)" >&2
        exit 1
    fi
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    echo "installing ${missing[*]} with apt-get"
    $SUDO apt-get update -q
    # The packages start their services on install; the tests start their own servers on free ports instead.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# A stamp, so unchanged requirements and locks cost nothing on the next run.
PROJECT_TEMPLATE="{{cookiecutter.project_slug}}"
stamp="$VENV/.requirements.stamp"
if [ ! -f "$stamp" ] || [ -n "$(find requirements-dev.txt "$PROJECT_TEMPLATE/pyproject.toml" "$PROJECT_TEMPLATE"/*uv.lock* \
        -newer "$stamp" 2>/dev/null)" ]; then
    # The template's own tools (uv and cookiecutter among them), then the generated project's dependencies exactly as
    # its lock has them, with hashes: the boot tier installs each rendered project into this environment.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements-dev.txt
    # `make lock` needs only the tools: the lock it is about to rewrite may be out of step with pyproject.toml.
    [ -n "${TOOLS_ONLY:-}" ] && exit 0
    locked="$VENV/locked-requirements.txt"
    # --locked inside: a lock out of step with pyproject.toml stops here (re-lock with `make lock`).
    "$VENV/bin/python" tools/lock.py --export >"$locked"
    # uv, not pip: it reads only the package index (no local wheel directories whose builds could differ from the
    # hashed ones). --no-deps: the export already lists every dependency.
    "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --require-hashes --no-deps -r "$locked"
    "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null \
        || { "$VENV/bin/python" -m pip check; echo "the template's tools conflict with the locked versions" >&2; exit 1; }
    touch "$stamp"
fi
