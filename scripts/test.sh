#!/usr/bin/env bash
# The test command: set up, then run the test tiers cheapest first (tests/README.md says what
# each costs): unit, integration, chaos (the pr chaos suite: scenarios/*.yaml), docker.
#   bash scripts/test.sh                  every tier, in that order (what CI runs)
#   bash scripts/test.sh TIER [ARGS...]   one tier (unit, integration, chaos, docker), ARGS to pytest
#   bash scripts/test.sh ARGS...          pytest with these arguments
# Every server the tests need (Redis, the recommender's processes) is started and stopped by the
# tests themselves.
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

# Each tier gets a pytest process of its own: the chaos suite judges latency against a 20 ms SLA,
# and in a process that had run several hundred tests first its restart windows measured
# 20-24 ms. The docker tier runs last: it builds an image and starts a Docker engine.
run_tier() {
  local tier=$1
  shift
  case "$tier" in
    # Two xdist workers: the unit tier is CPU-bound pure logic (about 40 s of CPU in one process).
    unit) run_pytest -n 2 tests/unit "$@" ;;
    integration) run_pytest tests/integration -m "not docker" "$@" ;;
    chaos) run_pytest scenarios --chaos-profile pr "$@" ;;
    docker) run_pytest tests -m docker "$@" ;;
    *) echo "test.sh: unknown tier '$tier' (unit, integration, chaos, docker)" >&2; return 2 ;;
  esac
}

case "${1:-}" in
  unit | integration | chaos | docker)
    run_tier "$@"
    exit $?
    ;;
esac
if (($#)); then
  run_pytest "$@"
  exit $?
fi

status=0
summary=()
for tier in unit integration chaos docker; do
  start=$SECONDS
  code=0
  run_tier "$tier" || code=$?
  summary+=("$tier: exit $code, $((SECONDS - start)) s")
  if [ "$code" != 0 ]; then
    status=1
    # A broken unit tier means broken logic: the costly tiers would only repeat it.
    if [ "$tier" = unit ]; then
      echo "test.sh: the unit tier failed; the integration, chaos and docker tiers were not run" >&2
      break
    fi
  fi
done
printf 'test.sh: %s\n' "${summary[@]}"
exit "$status"
