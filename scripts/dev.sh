#!/usr/bin/env bash
# The project's commands on a fresh machine with Python 3.11+:
#   scripts/dev.sh setup   create .venv, install the package with its dev extras (the build generates the stubs)
#   scripts/dev.sh run     setup, then start the service (gRPC :50051, JSON/HTTP :8001, embedded PostgreSQL)
#   scripts/dev.sh test    setup, lint, then the whole test suite (extra arguments go to pytest)
#   scripts/dev.sh lint    ruff, mypy, buf lint and the generated-files check
#   scripts/dev.sh screenshots   the README's dashboard screenshots (docs/), from a real service in Chromium
#   scripts/dev.sh faults  the fault campaign at length (database killed, artifacts damaged, disk full)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV_PY=.venv/bin/python

setup() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || { echo "Python 3.11 or newer is needed (found $("$PYTHON" --version))" >&2; exit 1; }
    [ -x "$VENV_PY" ] || "$PYTHON" -m venv .venv
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV_PY" -m pip install --quiet --disable-pip-version-check -e '.[dev]'
}

lint() {
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy
    .venv/bin/buf lint gateway/recommender.binpb --config buf.yaml --path recommender/v1/recommender.proto
    "$VENV_PY" -m recommender.codegen --check
}

command=${1:-}
shift || true
case "$command" in
    setup) setup ;;
    run) setup && exec "$VENV_PY" server.py "$@" ;;
    test) setup && lint && exec "$VENV_PY" -m pytest "$@" ;;
    lint) lint ;;
    faults) setup && exec "$VENV_PY" -m bench.faults "$@" ;;
    screenshots) setup && RECOMMENDER_SCREENSHOTS_DIR=docs exec "$VENV_PY" -m pytest tests/test_dashboard.py -k screenshots ;;
    *) echo "usage: scripts/dev.sh setup|run|test|lint|screenshots|faults [args]" >&2; exit 2 ;;
esac
