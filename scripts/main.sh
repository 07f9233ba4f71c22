#!/usr/bin/env bash
# The main job: set up, then run a chaos scenario against the local recommender and write its
# run record (runs/<id>/run.json, the request log, histograms, component logs) and report.
# Exit code: 0 PASS, 1 FAIL, 3 INCONCLUSIVE, 2 usage error, 4 harness error.
# Arguments replace the default scenario and options, e.g.
#   bash scripts/main.sh scenarios/primary_freeze.yaml --profile nightly --seed 7
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  set -- scenarios/primary_kill.yaml --profile pr
fi
set +e
.venv/bin/recchaos run "$@"
code=$?
set -e
latest=$(ls -1dt runs/*/ 2>/dev/null | head -1)
if [ -n "$latest" ] && .venv/bin/recchaos report --help >/dev/null 2>&1; then
  .venv/bin/recchaos report "$latest" || true
fi
exit "$code"
