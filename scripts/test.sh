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
# No arguments: unit and integration tests, then the pr chaos suite in a pytest process of its
# own. The suite measures latency against a 20 ms SLA on the same two cores: in one process
# after several hundred tests its restart scenarios failed on 20-24 ms windows that pass when
# it runs alone, and passed in a process of its own (cause not pinned down).
status=0
run_pytest tests || status=$?
run_pytest scenarios || status=$?
exit "$status"
