#!/usr/bin/env bash
# Runs the test suite of the released Melange 7.2.0 (its tests/ folder) against this package,
# with a moto server on a free loopback port as the SQS/SNS endpoint it reads from
# SQSHOST/SQSPORT/SNSHOST/SNSPORT. Nothing is downloaded: point it at a copy of those tests.
#
#   scripts/run_legacy_suite.sh /path/to/checkout-of-7.2.0     # the folder holding tests/
#   LEGACY_SUITE=/path/to/checkout-of-7.2.0 scripts/run_legacy_suite.sh [pytest args]
#
# The suite's own test dependencies (doublex, PyHamcrest, polling) come with the `dev` extra.
# Exits 0 with a note when no copy of the tests is present. Not part of CI: it needs that copy.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
suite="${LEGACY_SUITE:-}"
if [[ $# -gt 0 && -d "$1/tests" ]]; then
    suite="$1"
    shift
fi
if [[ -z "$suite" || ! -f "$suite/tests/fixtures.py" ]]; then
    echo "legacy suite: no copy of the 7.2.0 tests/ folder given (LEGACY_SUITE or first argument); nothing run"
    exit 0
fi

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$python" -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
moto_pid=$!
trap 'kill "$moto_pid" 2>/dev/null; wait "$moto_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    if "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.2
done

# The 7.2.0 tests import their helpers as `tests.fixtures`: run from the suite's folder so that
# `tests` is theirs, with this package installed in the interpreter (no source tree on the path).
cd "$suite"
export SQSHOST=http://127.0.0.1 SQSPORT="$port" SNSHOST=http://127.0.0.1 SNSPORT="$port"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
"$python" -m pytest -p no:cacheprovider --rootdir "$suite" -c /dev/null -q "$@" tests
