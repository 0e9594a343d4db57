#!/usr/bin/env bash
# The project's commands on a fresh machine with Python 3.11+:
#   scripts/dev.sh setup   create .venv, install the package with its dev extras (the build generates the stubs),
#                          compile the model's loops into numba's cache
#   scripts/dev.sh run     setup, then start the service (gRPC :50051, JSON/HTTP :8001, embedded PostgreSQL)
#   scripts/dev.sh test    setup (Chromium and its driver too, for the dashboard's tests), lint, then the whole
#                          test suite (extra arguments go to pytest)
#   scripts/dev.sh lint    ruff, mypy, the layers (import-linter), buf lint and the generated-files check
#   scripts/dev.sh screenshots   the README's dashboard screenshots (docs/), from a real service in Chromium
#   scripts/dev.sh faults  the fault campaign at length (database killed, artifacts damaged, disk full)
#   scripts/dev.sh installcheck   the package as users install it: a wheel in a fresh venv, served from elsewhere
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
    "$VENV_PY" -m recommender.model.precompile  # numba's cache, so that no test's server compiles on first use
}

# The dashboard's browser tests drive Debian's Chromium and its driver: installed here when missing, so that the
# test command alone runs every test on a fresh machine (root or password-less sudo needed once).
browser() {
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
    local install="apt-get install -y -q --no-install-recommends chromium chromium-driver"
    [ "$(id -u)" = 0 ] || install="sudo -n $install"
    echo "installing Chromium and ChromeDriver for the dashboard's browser tests" >&2
    $install >/dev/null || { ${install%% apt-get*} apt-get update -q >/dev/null && $install >/dev/null; } \
        || echo "could not install chromium: the dashboard's browser tests will say so and fail" >&2
}

lint() {
    # One chain: `set -e` does not reach inside a function called from an && list, so a failing step must stop it.
    .venv/bin/ruff check . &&
        .venv/bin/ruff format --check . &&
        .venv/bin/mypy &&
        .venv/bin/lint-imports --no-cache --config pyproject.toml &&
        .venv/bin/buf lint gateway/recommender.binpb --config buf.yaml --path recommender/v1/recommender.proto &&
        "$VENV_PY" -m recommender.gateway.codegen --check
}

command=${1:-}
shift || true
case "$command" in
    setup) setup ;;
    run) setup && exec "$VENV_PY" server.py "$@" ;;
    test) setup && browser && lint && exec "$VENV_PY" -m pytest "$@" ;;
    lint) lint ;;
    faults) setup && exec "$VENV_PY" -m bench.faults "$@" ;;
    installcheck) setup && exec "$VENV_PY" scripts/install_check.py "$@" ;;
    screenshots) setup && browser && RECOMMENDER_SCREENSHOTS_DIR=docs exec "$VENV_PY" -m pytest tests/test_dashboard_in_a_browser.py -k screenshots ;;
    *) echo "usage: scripts/dev.sh setup|run|test|lint|screenshots|faults|installcheck [args]" >&2; exit 2 ;;
esac
