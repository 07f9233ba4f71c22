#!/usr/bin/env bash
# The nightly chaos job, in two phases that can run on one machine or on many:
#
#   bash scripts/nightly.sh            run, then merge (what `tox -e nightly` runs)
#   bash scripts/nightly.sh run        run the scenarios and benchmarks, write run directories
#   bash scripts/nightly.sh merge P... merge the run directories and benchmark files found under
#                                      the paths P (searched recursively) into the history
#   bash scripts/nightly.sh explore    a budget-bounded fault-schedule search (recchaos explore)
#                                      of each NIGHTLY_EXPLORE scenario (`all` runs it after run)
#
# run: ROUNDS rounds, interleaved: each round runs every scenario once (nightly profile) and the
# component benchmarks once, so slow drift of the machine hits every scenario alike (compare
# inside one run, interleaved, repeated). .github/workflows/nightly.yml instead gives every
# (scenario, round) a runner of its own (NIGHTLY_ROUND picks the round) and merges there.
#
# merge: `recchaos history import` puts every run directory into the history store under one
# batch (each checked first: a corrupt one stops the merge with exit 2), benchmark files go in
# beside them, every run gets report.html; then the batch is compared with the stored baseline
# (`recchaos compare`: Mann-Whitney U over the rounds plus a minimum effect), the trend is
# redrawn, and the reports land in $OUT/reports/$BATCH. A clean night (no FAIL, no harness error,
# no regression) becomes the new baseline; the first night only sets it. A scenario with fewer
# runs than NIGHTLY_ROUNDS (a runner that died, a run that could not finish) is a harness error.
#
# explore: `recchaos explore` of each NIGHTLY_EXPLORE scenario into $OUT/explore/$BATCH, with the
# example database $OUT/explore-db kept from night to night (so last night's failing schedules are
# replayed first). merge finds every exploration (explore.json) under its paths too: a failing
# schedule is a FAIL of the night, its minimal.yaml and explore.html are copied to
# $REPORTS/explore/, and its closing note goes into summary.md. (An exploration's own example runs
# never enter the history: a directory holding an explore.json is not searched for run.json.)
#
# Exit: 0 clean; 1 a FAIL verdict, a failing schedule or a regression; 4 a harness error; 2 a
# corrupt run directory.
# INCONCLUSIVE runs are listed and fail the job only with NIGHTLY_STRICT=1 (exit 3).
#
# Settings (environment):
#   NIGHTLY_SCENARIOS  scenario files, space separated (default: primary_kill, primary_freeze)
#   NIGHTLY_ROUNDS     rounds (default 3: the smallest n for which the rank test can say p<=0.05)
#   NIGHTLY_ROUND      run only this round number (one runner per round in CI)
#   NIGHTLY_PROFILE    scenario profile (default nightly; empty: none)
#   NIGHTLY_OUT        output root (default runs/nightly)
#   NIGHTLY_BENCH      1 to run the component benchmarks each round (default 1)
#   NIGHTLY_MIN_EFFECT minimum effect for a regression (default 5%,0.5ms)
#   NIGHTLY_STRICT     1: INCONCLUSIVE runs fail the job too
#   RECCHAOS_BATCH     the night's batch name (default nightly-DATE-TIME)
#   RECCHAOS_HISTORY   history store (default $NIGHTLY_OUT/history.sqlite)
#   NIGHTLY_EXPLORE    scenarios to explore, space separated (default
#                      scenarios/explore/shard_faults.yaml; empty: none)
#   NIGHTLY_EXPLORE_TIME    the exploration's time budget in seconds (default 1200)
#   NIGHTLY_EXPLORE_BUDGET  instead: the schedules to try (unset: the time budget applies)
set -uo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${NIGHTLY_SCENARIOS-"scenarios/primary_kill.yaml scenarios/primary_freeze.yaml"}
ROUNDS=${NIGHTLY_ROUNDS:-3}
PROFILE=${NIGHTLY_PROFILE-nightly}
OUT=${NIGHTLY_OUT:-runs/nightly}
BENCH=${NIGHTLY_BENCH:-1}
MIN_EFFECT=${NIGHTLY_MIN_EFFECT:-5%,0.5ms}
BATCH=${RECCHAOS_BATCH:-nightly-$(date -u +%Y%m%d-%H%M%S)}
export RECCHAOS_BATCH=$BATCH
export RECCHAOS_HISTORY=${RECCHAOS_HISTORY:-$OUT/history.sqlite}
PY=${NIGHTLY_PYTHON:-.venv/bin/python}
RECCHAOS=("$PY" -m harness.cli)
RUNS=$OUT/runs/$BATCH
REPORTS=$OUT/reports/$BATCH
EXPLORE=${NIGHTLY_EXPLORE-scenarios/explore/shard_faults.yaml}
EXPLORED=$OUT/explore/$BATCH
LOG=$REPORTS/nightly.log
mkdir -p "$REPORTS"

say() { echo "nightly: $*" | tee -a "$LOG"; }

# One line per run that did not leave a complete run directory; merge reads these files back.
problem() { echo "$*" >>"$RUNS/problems.txt"; say "problem: $*"; }

run_one() {  # scenario round
  local scenario=$1 round=$2 output rc run_dir
  say "round $round/$ROUNDS: $scenario"
  local args=(run "$scenario" --out "$RUNS" --no-progress)
  [ -n "$PROFILE" ] && args+=(--profile "$PROFILE")
  output=$("${RECCHAOS[@]}" "${args[@]}" 2>&1)
  rc=$?
  echo "$output" >>"$LOG"
  echo "$output" | tail -n 4
  run_dir=$(echo "$output" | sed -n 's/^run record: \(.*\)\/run\.json$/\1/p' | tail -n 1)
  if [ -z "$run_dir" ] || [ ! -f "$run_dir/run.json" ]; then
    problem "$scenario round $round: exit $rc and no run record (see $LOG)"
  fi
  return "$rc"
}

run_bench() {  # round
  local json=$RUNS/benchmarks-round-$1.json
  say "round $1/$ROUNDS: component benchmarks -> $json"
  if ! "$PY" -m pytest benchmarks/test_components.py -q -p no:cacheprovider \
      --benchmark-max-time=0.5 --benchmark-json="$json" >>"$LOG" 2>&1; then
    problem "component benchmarks round $1 (see $LOG)"
    rm -f "$json"
    return 4
  fi
}

phase_run() {
  mkdir -p "$RUNS"
  local first=1 last=$ROUNDS status=0 rc
  if [ -n "${NIGHTLY_ROUND:-}" ]; then first=$NIGHTLY_ROUND last=$NIGHTLY_ROUND; fi
  say "batch $BATCH: rounds $first..$last of [$SCENARIOS] profile '${PROFILE:-none}' -> $RUNS"
  for round in $(seq "$first" "$last"); do
    for scenario in $SCENARIOS; do
      run_one "$scenario" "$round"; rc=$?
      # worst first: a harness error (4) over FAIL (1) over INCONCLUSIVE (3)
      case $rc in 0) ;; 1) [ $status = 4 ] || status=1 ;; 3) [ $status = 0 ] && status=3 ;; *) status=4 ;; esac
    done
    if [ "$BENCH" = 1 ]; then run_bench "$round" || status=4; fi
  done
  return $status
}

phase_explore() {
  local status=0 rc output args
  mkdir -p "$EXPLORED"
  for scenario in $EXPLORE; do
    say "explore: $scenario -> $EXPLORED"
    args=(explore "$scenario" --out "$EXPLORED" --database "$OUT/explore-db" --no-progress)
    if [ -n "${NIGHTLY_EXPLORE_BUDGET:-}" ]; then
      args+=(--budget "$NIGHTLY_EXPLORE_BUDGET")
    else
      args+=(--time-budget "${NIGHTLY_EXPLORE_TIME:-1200}")
    fi
    output=$("${RECCHAOS[@]}" "${args[@]}" 2>&1)
    rc=$?
    echo "$output" >>"$LOG"
    echo "$output" | tail -n 12
    case $rc in 0) ;; 1) [ $status = 4 ] || status=1 ;; 3) [ $status = 0 ] && status=3 ;; *) status=4 ;; esac
  done
  return $status
}

# explore.json -> "verdict<TAB>status<TAB>scenario path<TAB>name", then the closing note's lines
exploration_fields() {
  "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("\t".join(str(d.get(k) or "-") for k in ("verdict", "status", "scenario_path", "scenario_name")))
print("\n".join(d.get("closing_note") or []))' "$1"
}

merge_explorations() {  # paths; appends to the caller's fails, inconclusive, errors, notes
  local rec dir fields verdict status path name
  while IFS= read -r rec; do
    dir=$(dirname "$rec")
    fields=$(exploration_fields "$rec") || { errors+=("exploration $dir: unreadable explore.json"); continue; }
    IFS=$'\t' read -r verdict status path name <<<"$(echo "$fields" | head -n 1)"
    mkdir -p "$REPORTS/explore"
    cp "$dir/explore.html" "$REPORTS/explore/$name-explore.html" 2>/dev/null
    [ -f "$dir/minimal.yaml" ] && cp "$dir/minimal.yaml" "$REPORTS/explore/$name-minimal.yaml"
    notes+=("$(echo "$fields" | tail -n +2)")
    if [ "$status" != complete ]; then errors+=("explore $path: exploration $status ($dir)")
    elif [ "$verdict" = FAIL ]; then fails+=("explore $path: a failing schedule ($REPORTS/explore/$name-minimal.yaml)")
    elif [ "$verdict" = INCONCLUSIVE ]; then inconclusive+=("explore $path ($dir)"); fi
  done < <(find "$@" -name explore.json 2>/dev/null | sort)
}

scenario_name() {  # scenario file -> its name: field
  "${RECCHAOS[@]}" scenarios show "$1" 2>/dev/null | sed -n 's/^name: //p' | head -n 1
}

phase_merge() {
  local fails=() inconclusive=() errors=() run_dirs=() benches=() notes=() line
  # a directory holding an explore.json is an exploration: its example runs stay out of the history
  while IFS= read -r line; do run_dirs+=("$line"); done < <(find "$@" -type d -exec test -f '{}/explore.json' \; -prune -o -name run.json -printf '%h\n' | sort -u)
  while IFS= read -r line; do benches+=("$line"); done < <(find "$@" -name 'benchmarks-round-*.json' | sort)
  while IFS= read -r line; do [ -n "$line" ] && errors+=("$line"); done < <(find "$@" -name problems.txt -exec cat {} + 2>/dev/null)
  say "merge into batch $BATCH: ${#run_dirs[@]} run(s), ${#benches[@]} benchmark file(s) from $*"
  if [ ${#run_dirs[@]} -gt 0 ]; then
    "${RECCHAOS[@]}" history import "${run_dirs[@]}" --batch "$BATCH" --db "$RECCHAOS_HISTORY" --report 2>&1 | tee -a "$LOG"
    local irc=${PIPESTATUS[0]}
    if [ "$irc" != 0 ]; then say "history import failed (exit $irc): nothing merged"; return "$irc"; fi
  fi
  for json in "${benches[@]}"; do
    "$PY" -m reports append-bench "$json" --batch "$BATCH" --db "$RECCHAOS_HISTORY" >>"$LOG" 2>&1 \
      || errors+=("benchmark file $json could not be added (see $LOG)")
  done

  # verdicts and counts of what arrived, from the history itself
  local listing
  listing=$("${RECCHAOS[@]}" history list "$BATCH" --db "$RECCHAOS_HISTORY" 2>/dev/null | tail -n +2)
  while IFS=$'\t' read -r _id _batch scen status verdict _partial dir; do
    [ -z "$_id" ] && continue
    if [ "$status" != complete ]; then errors+=("$scen: run $status ($dir)")
    elif [ "$verdict" = FAIL ]; then fails+=("$scen ($dir)")
    elif [ "$verdict" = INCONCLUSIVE ]; then inconclusive+=("$scen ($dir)"); fi
  done <<<"$listing"
  for scenario in $SCENARIOS; do
    local name got
    name=$(scenario_name "$scenario")
    got=$(printf '%s\n' "$listing" | awk -F'\t' -v n="$name" '$3 == n && $4 == "complete"' | wc -l)
    [ "$got" -lt "$ROUNDS" ] && errors+=("$scenario: $got of $ROUNDS complete run(s) arrived")
  done

  merge_explorations "$@"

  local regression=0
  if "$PY" -m reports has-baseline --db "$RECCHAOS_HISTORY" >/dev/null 2>&1; then
    local promote=()
    [ ${#fails[@]} -eq 0 ] && [ ${#errors[@]} -eq 0 ] && promote=(--set-baseline)
    "${RECCHAOS[@]}" compare history:baseline "history:$BATCH" --db "$RECCHAOS_HISTORY" \
      --out "$REPORTS" --min-effect "$MIN_EFFECT" "${promote[@]}" 2>&1 | tee -a "$LOG"
    local crc=${PIPESTATUS[0]}
    if [ "$crc" = 1 ]; then regression=1; elif [ "$crc" != 0 ]; then errors+=("compare exit $crc"); fi
  elif [ ${#fails[@]} -eq 0 ] && [ ${#errors[@]} -eq 0 ]; then
    say "no baseline yet: batch $BATCH becomes the baseline"
    "$PY" -m reports set-baseline "$BATCH" --db "$RECCHAOS_HISTORY" >>"$LOG" 2>&1
  else
    say "no baseline yet, and this batch is not clean: no baseline set"
  fi
  "${RECCHAOS[@]}" trend --db "$RECCHAOS_HISTORY" --out "$REPORTS" 2>&1 | tee -a "$LOG"

  # One markdown page for CI: problems, compare, trend, then every run's summary.
  local summary=$REPORTS/summary.md
  {
    echo "# recchaos nightly $BATCH"
    echo
    for f in "${fails[@]}"; do echo "- ❌ FAIL: $f"; done
    for f in "${errors[@]}"; do echo "- 🛑 harness error: $f"; done
    for f in "${inconclusive[@]}"; do echo "- ⚠️ INCONCLUSIVE: $f"; done
    echo
    for n in "${notes[@]}"; do echo '```'; echo "$n"; echo '```'; echo; done
    [ -f "$REPORTS/compare.md" ] && cat "$REPORTS/compare.md" && echo
    [ -f "$REPORTS/trend.md" ] && cat "$REPORTS/trend.md" && echo
    for d in "${run_dirs[@]}"; do [ -f "$d/report.md" ] && cat "$d/report.md" && echo; done
  } >"$summary"
  [ -n "${GITHUB_STEP_SUMMARY:-}" ] && cat "$summary" >>"$GITHUB_STEP_SUMMARY"
  say "reports in $REPORTS (summary.md, compare.html, trend.html; per run: report.html in each run directory)"

  local status=0
  if [ ${#errors[@]} -gt 0 ]; then status=4; fi
  if [ ${#fails[@]} -gt 0 ] || [ "$regression" = 1 ]; then status=1; fi
  if [ "${NIGHTLY_STRICT:-0}" = 1 ] && [ ${#inconclusive[@]} -gt 0 ] && [ $status = 0 ]; then
    status=3
  fi
  say "done: ${#fails[@]} FAIL, ${#inconclusive[@]} INCONCLUSIVE, ${#errors[@]} error(s), regression=$regression -> exit $status"
  return $status
}

case ${1:-all} in
  run) phase_run ;;
  merge)
    shift
    if [ $# -eq 0 ]; then echo "usage: $0 merge PATH... (run directories or folders holding them)" >&2; exit 2; fi
    phase_merge "$@"
    ;;
  explore) phase_explore ;;
  all) phase_run; phase_explore; phase_merge "$RUNS" "$EXPLORED" ;;
  *) echo "usage: $0 [run | merge PATH... | explore | all]" >&2; exit 2 ;;
esac
