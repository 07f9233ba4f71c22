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
# pytest with a wall-clock budget in seconds (0: none). pytest exits 5 when it collected no test:
# that is a failure here, never a pass.
run_pytest_within() {
  local budget=$1
  shift
  set +e
  # --foreground: a Ctrl-C at the terminal still reaches pytest. The output is also kept, so
  # that the end of the whole run can repeat each tier's failures (a long run's log is often
  # read from its end only, and the chaos tier's summary is then 200 lines up). -u: through the
  # pipe, pytest's progress still shows as it happens.
  local color=()
  [ -t 1 ] && color=(--color=yes)
  timeout --foreground --kill-after=60 "$budget" .venv/bin/python -u -m pytest "${color[@]}" "$@" 2>&1 |
    tee -a "$TIER_OUTPUT"
  local code=${PIPESTATUS[0]}
  set -e
  if [ "$code" = 5 ]; then
    echo "test.sh: pytest ran no test ($*)" >&2
    return 1
  fi
  return "$code"
}
run_pytest() { run_pytest_within 0 "$@"; }
TIER_BASE=$(mktemp -t recchaos-tier-XXXXXX)
TIER_OUTPUT=$TIER_BASE.args
trap 'rm -f "$TIER_BASE" "$TIER_BASE".*' EXIT

# Every process a tier starts inherits this tag; what still carries it after the tier is a
# leftover (harness/process/leftovers.py): stopped, named, and the tier fails. Left alone, a
# leftover takes the CPU, ports or memory of the tiers after it.
export RECCHAOS_TEST_RUN="${RECCHAOS_TEST_RUN:-test.sh-$$-$(date +%s%N)}"

# Hypothesis keeps what it computes once per machine (the Unicode tables st.text() draws from, the
# constants it harvests from the project's modules) in its storage directory, .hypothesis/ in the
# checkout by default: from a fresh clone each unit worker rebuilt them, 1.4 s of its first tests
# (the unit tier's median went from 26.9 s to 25.3 s).
# They live beside the model artifacts in the user's cache instead, with the example database.
export HYPOTHESIS_STORAGE_DIRECTORY="${HYPOTHESIS_STORAGE_DIRECTORY:-${XDG_CACHE_HOME:-$HOME/.cache}/recchaos/hypothesis}"

# Wall-clock budget per tier, several times its usual time (tests/README.md): a tier past it is
# stopped (SIGTERM, SIGKILL a minute later) and reported, instead of a whole run that never ends.
tier_budget_s() {
  case "$1" in
    unit) echo 300 ;;
    integration) echo 2000 ;;
    chaos) echo 1500 ;;
    docker) echo 900 ;;
  esac
}

# What the latency figures ran on: the CPUs, the real-time budgets and the CPU cgroup (autogroups
# apply only in the root one), in the log before the first tier (harness/process/machine.py).
echo "test.sh: $(.venv/bin/python -m harness.process.machine 2>&1 || echo "scheduler: not described")"

# Each tier gets a pytest process of its own: the chaos suite judges latency against a 20 ms SLA,
# and in a process that had run several hundred tests first its restart windows measured
# 20-24 ms. The docker tier runs last: it builds an image and starts a Docker engine.
run_tier() {
  local tier=$1
  shift
  local budget code=0
  budget=$(tier_budget_s "$tier")
  TIER_OUTPUT=$TIER_BASE.$tier
  : >"$TIER_OUTPUT"
  case "$tier" in
    # Two xdist workers: the unit tier is CPU-bound pure logic (about 40 s of CPU in one process).
    # Plugin autoloading off, the plugins it uses named (the recchaos plugin comes from the root
    # conftest): pytest marks every module of an autoloaded plugin's distribution for assertion
    # rewriting, so each worker rewrote Hypothesis's 80 modules from source at collection, and the
    # controller again at the session's end (Hypothesis's terminal summary imports it): 2.4 s of
    # the tier's 29 s. pytest-benchmark, which the unit tier does not use, is not loaded either.
    unit)
      run_pytest_within "$budget" -n 2 --disable-plugin-autoload -p xdist -p timeout \
        -p hypothesispytest tests/unit "$@" || code=$?
      ;;
    integration) run_pytest_within "$budget" tests/integration -m "not docker" "$@" || code=$? ;;
    chaos) run_pytest_within "$budget" scenarios --chaos-profile pr "$@" || code=$? ;;
    docker) run_pytest_within "$budget" tests -m docker "$@" || code=$? ;;
    *) echo "test.sh: unknown tier '$tier' (unit, integration, chaos, docker)" >&2; return 2 ;;
  esac
  if [ "$code" = 124 ] || [ "$code" = 137 ]; then
    echo "test.sh: the $tier tier ran past its budget of $budget s and was stopped" >&2
  fi
  if ! .venv/bin/python -m harness.process.leftovers "RECCHAOS_TEST_RUN=$RECCHAOS_TEST_RUN" \
    --after "the $tier tier"; then
    [ "$code" != 0 ] || code=1
  fi
  return "$code"
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
# Each tier's failed and errored tests with the first line of their message, once more at the
# very end, where a reader of the log's tail finds them.
for tier in unit integration chaos docker; do
  out=$TIER_BASE.$tier
  [ -s "$out" ] || continue
  grep -E '^(FAILED|ERROR) ' "$out" | cut -c1-1000 | sed "s/^/test.sh: $tier: /" || true
done
printf 'test.sh: %s\n' "${summary[@]}"
exit "$status"
