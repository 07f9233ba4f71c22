#!/usr/bin/env bash
# The test command: set up, then run the whole test suite (unit, integration, pr chaos suite).
# Every server the tests need (Redis, the recommender's processes) is started and stopped by the
# tests themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
.venv/bin/python -m pytest "$@"
code=$?
set -e
# pytest exits 5 when it collected no test: that is a failure here, never a pass.
if [ "$code" = 5 ]; then
  echo "test.sh: pytest ran no test" >&2
  exit 1
fi
exit "$code"
