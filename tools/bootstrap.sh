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
# A stamp, so an unchanged requirements file costs nothing on the next run.
if [ ! -f "$VENV/.requirements.stamp" ] || [ requirements-dev.txt -nt "$VENV/.requirements.stamp" ]; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r requirements-dev.txt
    touch "$VENV/.requirements.stamp"
fi
