#!/usr/bin/env bash
# The test command: set up, then run the whole test suite (unit, integration, pr chaos suite).
# Every server the tests need (Redis, the recommender's processes) is started and stopped by the
# tests themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run_pytest() {
  set +e
  .venv/bin/python -m pytest "$@"
  local code=$?
  set -e
  # pytest exits 5 when it collected no test: that is a failure here, never a pass.
  if [ "$code" = 5 ]; then
    echo "test.sh: pytest ran no test ($*)" >&2
    return 1
  fi
  return "$code"
}

if (($#)); then
  run_pytest "$@"
  exit $?
fi
# No arguments: unit and integration tests, then the pr chaos suite. The suite always gets a
# pytest process of its own: it judges latency against a 20 ms SLA, and in a process that had
# run several hundred tests first, its restart windows measured 20-24 ms (cause unknown).
status=0
run_pytest tests || status=$?
run_pytest scenarios || status=$?
exit "$status"
