#!/usr/bin/env bash
# The nightly chaos job (what `tox -e nightly` and .github/workflows/nightly.yml run).
#
# ROUNDS rounds, interleaved: each round runs every scenario once (nightly profile) and the
# component benchmarks once, so slow drift of the machine hits every scenario alike (DESIGN.md:
# compare inside one run, interleaved, repeated). Every run and benchmark file goes into the
# history store under one batch; then the batch is compared with the stored baseline
# (`recchaos compare`, Mann-Whitney U over the rounds plus a minimum effect), the trend is
# redrawn, and the reports land in $OUT/reports/$BATCH. A clean night (no FAIL, no regression)
# becomes the new baseline; the first night just sets it.
#
# Exit: 0 clean; 1 a FAIL verdict or a regression; 4 a harness error (a run that could not
# finish). INCONCLUSIVE runs are listed and fail the job only with NIGHTLY_STRICT=1.
#
# Settings (environment):
#   NIGHTLY_SCENARIOS  scenario files, space separated (default: primary_kill, primary_freeze)
#   NIGHTLY_ROUNDS     rounds (default 3: the smallest n for which the rank test can say p<=0.05)
#   NIGHTLY_PROFILE    scenario profile (default nightly; empty: none)
#   NIGHTLY_OUT        output root (default runs/nightly)
#   NIGHTLY_BENCH      1 to run the component benchmarks each round (default 1)
#   NIGHTLY_MIN_EFFECT minimum effect for a regression (default 5%,0.5ms)
#   NIGHTLY_STRICT     1: INCONCLUSIVE runs fail the job too
#   RECCHAOS_HISTORY   history store (default $NIGHTLY_OUT/history.sqlite)
set -uo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${NIGHTLY_SCENARIOS:-"scenarios/primary_kill.yaml scenarios/primary_freeze.yaml"}
ROUNDS=${NIGHTLY_ROUNDS:-3}
PROFILE=${NIGHTLY_PROFILE-nightly}
OUT=${NIGHTLY_OUT:-runs/nightly}
BENCH=${NIGHTLY_BENCH:-1}
MIN_EFFECT=${NIGHTLY_MIN_EFFECT:-5%,0.5ms}
BATCH=${RECCHAOS_BATCH:-nightly-$(date -u +%Y%m%d-%H%M%S)}
export RECCHAOS_BATCH=$BATCH
export RECCHAOS_HISTORY=${RECCHAOS_HISTORY:-$OUT/history.sqlite}
PY=.venv/bin/python
RECCHAOS=.venv/bin/recchaos
RUNS=$OUT/runs/$BATCH
REPORTS=$OUT/reports/$BATCH
mkdir -p "$RUNS" "$REPORTS" "$OUT/bench/$BATCH"
LOG=$REPORTS/nightly.log
fails=() inconclusive=() errors=()

say() { echo "nightly: $*" | tee -a "$LOG"; }

say "batch $BATCH: $ROUNDS round(s) of [$SCENARIOS] profile '${PROFILE:-none}'; history $RECCHAOS_HISTORY"
for round in $(seq 1 "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    say "round $round/$ROUNDS: $scenario"
    args=(run "$scenario" --out "$RUNS" --no-progress)
    [ -n "$PROFILE" ] && args+=(--profile "$PROFILE")
    output=$("$RECCHAOS" "${args[@]}" 2>&1)
    rc=$?
    echo "$output" >>"$LOG"
    echo "$output" | tail -n 4
    run_dir=$(echo "$output" | sed -n 's/^run record: \(.*\)\/run\.json$/\1/p' | tail -n 1)
    case $rc in
      0) ;;
      1) fails+=("$scenario round $round ($run_dir)") ;;
      3) inconclusive+=("$scenario round $round ($run_dir)") ;;
      *) errors+=("$scenario round $round: exit $rc ($run_dir)") ;;
    esac
    if [ -n "$run_dir" ] && [ -f "$run_dir/run.json" ]; then
      # report + append to the history (idempotent if the runner appended already)
      "$RECCHAOS" report "$run_dir" --db "$RECCHAOS_HISTORY" >>"$LOG" 2>&1 \
        || say "could not report $run_dir (see $LOG)"
    fi
  done
  if [ "$BENCH" = 1 ]; then
    json=$OUT/bench/$BATCH/round-$round.json
    say "round $round/$ROUNDS: component benchmarks -> $json"
    if $PY -m pytest benchmarks/test_components.py -q -p no:cacheprovider \
        --benchmark-max-time=0.5 --benchmark-json="$json" >>"$LOG" 2>&1; then
      $PY -m reports append-bench "$json" --batch "$BATCH" --db "$RECCHAOS_HISTORY" >>"$LOG" 2>&1
    else
      errors+=("component benchmarks round $round (see $LOG)")
    fi
  fi
done

regression=0
if $PY -m reports has-baseline --db "$RECCHAOS_HISTORY" >/dev/null 2>&1; then
  promote=()
  [ ${#fails[@]} -eq 0 ] && [ ${#errors[@]} -eq 0 ] && promote=(--set-baseline)
  "$RECCHAOS" compare history:baseline "history:$BATCH" --db "$RECCHAOS_HISTORY" \
    --out "$REPORTS" --min-effect "$MIN_EFFECT" "${promote[@]}" 2>&1 | tee -a "$LOG"
  crc=${PIPESTATUS[0]}
  if [ "$crc" = 1 ]; then regression=1; elif [ "$crc" != 0 ]; then errors+=("compare exit $crc"); fi
else
  if [ ${#fails[@]} -eq 0 ] && [ ${#errors[@]} -eq 0 ]; then
    say "no baseline yet: batch $BATCH becomes the baseline"
    $PY -m reports set-baseline "$BATCH" --db "$RECCHAOS_HISTORY" >>"$LOG" 2>&1
  else
    say "no baseline yet, and this batch is not clean: no baseline set"
  fi
fi
"$RECCHAOS" trend --db "$RECCHAOS_HISTORY" --out "$REPORTS" 2>&1 | tee -a "$LOG"

# One markdown page for CI: compare, trend, then every run's summary.
summary=$REPORTS/summary.md
{
  echo "# recchaos nightly $BATCH"
  echo
  for f in "${fails[@]}"; do echo "- ❌ FAIL: $f"; done
  for f in "${errors[@]}"; do echo "- 🛑 harness error: $f"; done
  for f in "${inconclusive[@]}"; do echo "- ⚠️ INCONCLUSIVE: $f"; done
  echo
  [ -f "$REPORTS/compare.md" ] && cat "$REPORTS/compare.md" && echo
  [ -f "$REPORTS/trend.md" ] && cat "$REPORTS/trend.md" && echo
  for md in "$RUNS"/*/report.md; do [ -f "$md" ] && cat "$md" && echo; done
} >"$summary"
[ -n "${GITHUB_STEP_SUMMARY:-}" ] && cat "$summary" >>"$GITHUB_STEP_SUMMARY"
say "reports in $REPORTS (summary.md, compare.html, trend.html; per run: $RUNS/*/report.html)"

status=0
if [ ${#errors[@]} -gt 0 ]; then status=4; fi
if [ ${#fails[@]} -gt 0 ] || [ "$regression" = 1 ]; then status=1; fi
if [ "${NIGHTLY_STRICT:-0}" = 1 ] && [ ${#inconclusive[@]} -gt 0 ] && [ $status = 0 ]; then
  status=3
fi
say "done: ${#fails[@]} FAIL, ${#inconclusive[@]} INCONCLUSIVE, ${#errors[@]} error(s), regression=$regression -> exit $status"
exit $status
