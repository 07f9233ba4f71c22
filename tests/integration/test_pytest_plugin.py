"""The pytest plugin itself, with pytester and a fake runner: how verdicts map to outcomes, the
lines a failure prints (the replay line above all), exit codes, option resolution and its error
messages, scenario collection, each through an in-process pytest session (pytester). No cluster is started
here (test_plugin_fixtures.py starts real ones)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[2]

# The fake runner: a conftest implementing the plugin's hook. The verdict comes from the
# scenario's name; every call is appended to calls.jsonl so tests can see the settings used.
FAKE_RUNNER = """
import json
from pathlib import Path

from harness.checks.verdict import Verdict
from harness.model.record import RunRecord
from harness.runner.run import RunOutcome
from harness.runner.settings import resolve_scenario

CHECKS = {
    "PASS": [],
    "FAIL": [{"verdict": "FAIL", "message": "p99 43.2 ms during kill(shard-1-primary) window "
              "[6.0 s, 10.0 s] exceeds the SLO of 20.0 ms (x.yaml, slos[0]); 800 requests in "
              "the window", "value": 43.2, "limit": 20.0, "window": "during", "where": "x",
              "metric": "p99"}],
    "INCONCLUSIVE": [{"verdict": "INCONCLUSIVE", "message": "p99 during ... cannot be judged: "
                      "only 12 requests, fewer than the 100 needed", "value": 1.0,
                      "limit": 20.0, "window": "during", "where": "x", "metric": "p99"}],
    "EXPECTED": [{"verdict": "PASS", "message": "p99 31.0 ms ... exceeds the SLO of 20.0 ms; "
                  "violated as the scenario expects: no copy answers in time", "value": 31.0,
                  "limit": 20.0, "window": "during", "where": "x", "metric": "p99",
                  "expected_violation": True}],
}


def pytest_recchaos_run_scenario(settings, log):
    scenario = resolve_scenario(settings)
    kind = scenario.name.split("_")[0].upper()
    with open("calls.jsonl", "a") as fh:
        fh.write(json.dumps({"name": scenario.name, "seed": scenario.seed,
                             "profile": settings.profile, "sla_ms": scenario.sla_ms,
                             "out_dir": str(settings.out_dir), "path": settings.scenario_path,
                             "replay": settings.replay,
                             "backend": scenario.target.to_dict().get("backend")}) + "\\n")
    log(f"fake run of {scenario.name}")
    run_dir = Path(settings.out_dir) / scenario.name
    run_dir.mkdir(parents=True, exist_ok=True)
    if kind == "BROKEN":
        return RunOutcome(run_dir, None, 4, "HarnessError: the proxy did not start", "r")
    if kind == "CRASH":
        return RunOutcome(run_dir, None, 1, "SutFailure: steady state not reached", "r")
    verdict = "PASS" if kind == "EXPECTED" else kind
    record = RunRecord(scenario=scenario.to_dict(), seed=scenario.seed,
                       scenario_path=settings.scenario_path, profile=settings.profile,
                       replay=settings.replay or "", checks=tuple(CHECKS[kind]),
                       verdict=verdict, status="complete")
    return RunOutcome(run_dir, Verdict(verdict), Verdict(verdict).exit_code, "v", "r",
                      scenario, None, record)
"""


def scenario_yaml(
    name: str, seed: int = 5, profiles: str = "{pr: {}, nightly: {}}", extra: str = ""
) -> str:
    return f"""
name: {name}
seed: {seed}
target: {{kind: recommender, shards: 2, preset: tiny}}
warmup_s: 2
mix: {{users: 4000}}
load: [{{name: main, rate: 100, duration_s: 10}}]
slos: [{{metric: p99, at_most: 20}}]
profiles: {profiles}
{extra}
"""


def _plugin_args() -> list[str]:
    """Load the plugin explicitly only where its entry point is not installed."""
    eps = metadata.entry_points(group="pytest11")
    return (
        []
        if any(ep.value == "harness.pytest_plugin" for ep in eps)
        else ["-p", "harness.pytest_plugin"]
    )


@pytest.fixture
def chaos_dir(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for var in (
        "RECCHAOS_SEED",
        "RECCHAOS_PROFILE",
        "RECCHAOS_SLA_MS",
        "RECCHAOS_OUT",
        "RECCHAOS_RATE",
        "RECCHAOS_DURATION",
    ):
        monkeypatch.delenv(var, raising=False)
    pytester.makeconftest(FAKE_RUNNER)
    pytester.mkdir("scenarios")
    return pytester


def run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    # no:benchmark: pytest-benchmark asks git for the project's name when a session starts
    return p.runpytest(
        *_plugin_args(), "-p", "no:cacheprovider", "-p", "no:benchmark", "-rA", *args
    )


def write(p: pytest.Pytester, rel: str, text: str) -> Path:
    path = p.path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def calls(p: pytest.Pytester) -> list[dict]:
    path = p.path / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# -- verdicts -> outcomes -----------------------------------------------------------------------


def test_pass_is_passed_and_runs_the_pr_profile_by_default(chaos_dir):
    write(chaos_dir, "scenarios/pass_one.yaml", scenario_yaml("pass_one"))
    result = run(chaos_dir)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    [call] = calls(chaos_dir)
    assert (
        call["profile"] == "pr" and call["seed"] == 5 and call["path"] == "scenarios/pass_one.yaml"
    )
    assert Path(call["out_dir"]) == chaos_dir.path / "runs"
    result.stdout.fnmatch_lines(["*recchaos scenario runs*", "PASS *scenarios/pass_one.yaml*"])


def test_fail_is_failed_with_the_check_and_the_replay_line(chaos_dir):
    write(chaos_dir, "scenarios/fail_one.yaml", scenario_yaml("fail_one", seed=17))
    result = run(chaos_dir)
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*scenario fail_one (pr profile, seed 17): FAIL*",
            "*FAIL*p99 43.2 ms during kill(shard-1-primary) window*exceeds the SLO of 20.0 ms*",
            "run record: *fail_one*run.json",
            "Reproduce with: pytest scenarios/fail_one.yaml::fail_one --chaos-seed 17 "
            "--chaos-profile pr",
            "*(or: recchaos run scenarios/fail_one.yaml --seed 17 --profile pr)",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_the_replay_line_repeats_the_seed_and_overrides_given(chaos_dir):
    write(chaos_dir, "scenarios/fail_one.yaml", scenario_yaml("fail_one"))
    result = run(chaos_dir, "--chaos-seed", "99", "--sla-ms", "25")
    result.stdout.fnmatch_lines(
        [
            "Reproduce with: pytest scenarios/fail_one.yaml::fail_one "
            "--chaos-seed 99 --chaos-profile pr --sla-ms 25",
            "  (or: recchaos run scenarios/fail_one.yaml --seed 99 --profile pr --sla-ms 25)",
        ]
    )
    [call] = calls(chaos_dir)
    assert call["seed"] == 99 and call["sla_ms"] == 25.0
    assert "--chaos-seed 99" in call["replay"]  # what the run record stores


def test_the_backend_option_reaches_the_run_and_the_replay_line(chaos_dir):
    write(chaos_dir, "scenarios/fail_one.yaml", scenario_yaml("fail_one"))
    result = run(chaos_dir, "--chaos-seed", "5", "--chaos-backend", "docker")
    result.stdout.fnmatch_lines(
        [
            "Reproduce with: pytest scenarios/fail_one.yaml::fail_one "
            "--chaos-seed 5 --chaos-profile pr --chaos-backend docker",
            "  (or: recchaos run scenarios/fail_one.yaml --seed 5 --profile pr --backend docker)",
        ]
    )
    [call] = calls(chaos_dir)
    assert call["backend"] == "docker"


def test_inconclusive_is_skipped_with_the_reason_in_pr(chaos_dir):
    write(chaos_dir, "scenarios/inconclusive_one.yaml", scenario_yaml("inconclusive_one"))
    result = run(chaos_dir)
    result.assert_outcomes(skipped=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] scenarios/inconclusive_one.yaml:1: INCONCLUSIVE"
            "*only 12 requests* | Reproduce with: pytest scenarios/"
            "inconclusive_one.yaml::inconclusive_one --chaos-seed 5 "
            "--chaos-profile pr"
        ]
    )


def test_inconclusive_fails_in_nightly(chaos_dir):
    write(chaos_dir, "scenarios/inconclusive_one.yaml", scenario_yaml("inconclusive_one"))
    result = run(chaos_dir, "--chaos-profile", "nightly")
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "*seed 5): INCONCLUSIVE, which fails in the nightly profile",
            "*only 12 requests*",
            "Reproduce with: *--chaos-profile nightly",
        ]
    )


def test_an_expected_violation_is_an_expected_failure(chaos_dir):
    write(chaos_dir, "scenarios/expected_one.yaml", scenario_yaml("expected_one"))
    result = run(chaos_dir)
    result.assert_outcomes(xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["XFAIL *expected_one*violated as the scenario expects*"])


def test_a_harness_error_is_a_test_error_and_a_sut_crash_a_failure(chaos_dir):
    write(chaos_dir, "scenarios/broken_one.yaml", scenario_yaml("broken_one"))
    write(chaos_dir, "scenarios/crash_one.yaml", scenario_yaml("crash_one"))
    result = run(chaos_dir)
    result.assert_outcomes(errors=1, failed=1)
    result.stdout.fnmatch_lines(["*harness error (exit 4): HarnessError: the proxy did not start*"])
    result.stdout.fnmatch_lines(["*FAIL: SutFailure: steady state not reached*"])


def test_a_usage_error_is_a_collection_error_naming_file_field_and_value(chaos_dir):
    bad = scenario_yaml("bad_one").replace("rate: 100", "rate: -5")
    write(chaos_dir, "scenarios/bad_one.yaml", bad)
    result = run(chaos_dir)
    result.assert_outcomes(errors=1)
    assert result.ret == 2
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting scenarios/bad_one.yaml*",
            "*scenarios/bad_one.yaml: load[[]0[]].rate: got -5*",
        ]
    )
    assert calls(chaos_dir) == []


def test_a_profile_skip_is_a_skip_with_its_reason(chaos_dir):
    text = scenario_yaml(
        "pass_long", profiles="{pr: {skip: 'nightly only: too long'}, nightly: {}}"
    )
    write(chaos_dir, "scenarios/pass_long.yaml", text)
    result = run(chaos_dir)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] scenarios/pass_long.yaml:1: pr profile: nightly only: too long"]
    )
    run(chaos_dir, "--chaos-profile", "nightly").assert_outcomes(passed=1)


def test_a_scenario_without_profiles_runs_as_written_but_a_missing_chosen_one_is_an_error(
    chaos_dir,
):
    write(chaos_dir, "scenarios/pass_plain.yaml", scenario_yaml("pass_plain", profiles="{}"))
    write(
        chaos_dir, "scenarios/pass_pronly.yaml", scenario_yaml("pass_pronly", profiles="{pr: {}}")
    )
    result = run(chaos_dir, "--chaos-profile", "nightly")
    result.assert_outcomes(errors=1)  # a collection error: nothing runs
    result.stdout.fnmatch_lines(
        [
            "*pass_pronly.yaml: profile 'nightly' (from the command line "
            "(--chaos-profile)) is not defined; the file has: pr*"
        ]
    )
    run(chaos_dir, "--chaos-profile", "nightly", "scenarios/pass_plain.yaml").assert_outcomes(
        passed=1
    )
    assert [c["profile"] for c in calls(chaos_dir)] == [None]


def test_only_the_scenario_directories_are_collected_unless_a_file_is_named(chaos_dir):
    write(chaos_dir, "scenarios/pass_one.yaml", scenario_yaml("pass_one"))
    write(chaos_dir, "tests/data/pass_data.yaml", scenario_yaml("pass_data"))
    write(chaos_dir, "scenarios/sub/pass_deep.yaml", scenario_yaml("pass_deep"))
    run(chaos_dir).assert_outcomes(passed=1)
    run(chaos_dir, "tests/data/pass_data.yaml").assert_outcomes(passed=1)
    assert [c["name"] for c in calls(chaos_dir)] == ["pass_one", "pass_data"]


def test_a_scenario_that_needs_root_is_inconclusive_without_root(chaos_dir, monkeypatch):
    extra = "faults: [{kind: partition, target: shard-0-primary, at_s: 3, duration_s: 2}]"
    write(chaos_dir, "scenarios/pass_part.yaml", scenario_yaml("pass_part", extra=extra))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = run(chaos_dir)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*INCONCLUSIVE*pass_part needs root*nothing was run*"])
    run(chaos_dir, "--chaos-profile", "nightly").assert_outcomes(failed=1)
    assert calls(chaos_dir) == []


def test_junit_properties_carry_the_verdict_and_replay(chaos_dir):
    write(chaos_dir, "scenarios/pass_one.yaml", scenario_yaml("pass_one"))
    run(chaos_dir, "--junitxml", "out.xml").assert_outcomes(passed=1)
    xml = (chaos_dir.path / "out.xml").read_text()
    assert 'name="recchaos.verdict" value="PASS"' in xml
    assert "pytest scenarios/pass_one.yaml::pass_one --chaos-seed 5" in xml


# -- options: order and messages -------------------------------------------------------------

SHOW_SETTINGS = """
import pytest
from harness.pytest_plugin import settings_for

@pytest.mark.chaos(seed=3)
def test_marked(request):
    s = settings_for(request.node)
    print("SETTINGS", s.values["seed"], s.where["seed"], s.values["sla_ms"], s.where["sla_ms"])

def test_plain(request):
    s = settings_for(request.node)
    print("SETTINGS", s.values["seed"], s.where["seed"], s.values["sla_ms"], s.where["sla_ms"])
"""


def test_settings_resolve_marker_then_cli_then_env_then_ini(chaos_dir, monkeypatch):
    chaos_dir.makepyfile(test_show=SHOW_SETTINGS)
    chaos_dir.makeini("[pytest]\nchaos_seed = 1\nsla_ms = 30\n")
    result = run(chaos_dir, "-s")
    result.stdout.fnmatch_lines(
        [
            "*SETTINGS 3 @pytest.mark.chaos(seed=...) on test_show.py::"
            "test_marked 30.0 the ini key sla_ms in *tox.ini*",
            "*SETTINGS 1 the ini key chaos_seed in *",
        ]
    )
    monkeypatch.setenv("RECCHAOS_SEED", "2")
    result = run(chaos_dir, "-s")
    result.stdout.fnmatch_lines(["*SETTINGS 2 the environment variable RECCHAOS_SEED*"])
    result = run(chaos_dir, "-s", "--chaos-seed", "4")
    result.stdout.fnmatch_lines(
        ["*SETTINGS 3 @pytest.mark.chaos*", "*SETTINGS 4 the command line (--chaos-seed)*"]
    )


@pytest.mark.parametrize(
    ("args", "env", "ini", "expected"),
    [
        (
            ["--chaos-seed", "abc"],
            {},
            "",
            "invalid value 'abc' for --chaos-seed from the command line (--chaos-seed); allowed: "
            "an integer from 0 to 9223372036854775807",
        ),
        (
            ["--chaos-profile", "weekly"],
            {},
            "",
            "invalid value 'weekly' for --chaos-profile from the command line (--chaos-profile); "
            "allowed: one of pr, nightly",
        ),
        (
            [],
            {"RECCHAOS_SLA_MS": "-1"},
            "",
            "invalid value '-1' for --sla-ms from the environment variable RECCHAOS_SLA_MS; allowed: "
            "a number of milliseconds above 0",
        ),
        (
            [],
            {},
            "chaos_seed = 1.5",
            "invalid value '1.5' for --chaos-seed from the ini key chaos_seed in *",
        ),
    ],
)
def test_a_bad_option_value_says_where_it_came_from(
    chaos_dir, monkeypatch, args, env, ini, expected
):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if ini:
        chaos_dir.makeini(f"[pytest]\n{ini}\n")
    chaos_dir.makepyfile(test_x="def test_x():\n    pass\n")
    result = run(chaos_dir, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{expected}*"])


def test_a_bad_marker_argument_is_an_error_naming_the_test(chaos_dir):
    chaos_dir.makepyfile(
        test_m="""
import pytest

@pytest.mark.chaos(seed="x")
def test_m():
    pass

@pytest.mark.chaos(sed=1)
def test_n():
    pass
"""
    )
    result = run(chaos_dir)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*invalid value 'x' for --chaos-seed from "
            "@pytest.mark.chaos(seed=...) on test_m.py::test_m*"
        ]
    )
    result.stdout.fnmatch_lines(
        ["*@pytest.mark.chaos on test_m.py::test_n: unknown argument 'sed'; allowed: seed, *"]
    )


# -- markers and INCONCLUSIVE from a test -----------------------------------------------------

MARKED = """
import pytest
from harness.model.errors import Inconclusive

@pytest.mark.nightly
def test_long():
    pass

@pytest.mark.root
def test_needs_root():
    pass

def test_unsure():
    raise Inconclusive("only 3 requests in the during window")
"""


def test_markers_and_an_inconclusive_test(chaos_dir, monkeypatch):
    chaos_dir.makepyfile(test_marked=MARKED)
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = run(chaos_dir, "--strict-markers")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(
        [
            "*nightly only: run with --chaos-profile nightly*",
            "*needs root*",
            "*INCONCLUSIVE (skipped in the pr profile*only 3 requests*",
        ]
    )
    result = run(chaos_dir, "--chaos-profile", "nightly")
    result.assert_outcomes(passed=1, skipped=1, failed=1)


def test_markers_are_registered_once(chaos_dir):
    result = run(chaos_dir, "--markers")
    for name in ("chaos", "nightly", "gpu", "docker", "root"):
        assert sum(line.startswith(f"@pytest.mark.{name}") for line in result.outlines) == 1


@pytest.mark.parametrize(
    ("args", "ini", "pooled"),
    [
        ((), "", True),
        (("--chaos-fresh-cluster",), "", False),
        ((), "chaos_fresh_cluster = true", False),
    ],
)
def test_items_share_clusters_unless_told_to_start_fresh_ones(
    chaos_dir, monkeypatch, args, ini, pooled
):
    """The plugin's own runner hands each item to the session code with the session's cluster
    pool, or with none under --chaos-fresh-cluster; the pool is closed with the session."""
    import harness.runner.session as session

    seen: list[Any] = []
    closed: list[bool] = []

    def run_scenario(settings, pool, log):
        seen.append(pool)
        raise RuntimeError("stop here: the runner was reached")

    monkeypatch.setattr(session, "run_scenario", run_scenario)
    monkeypatch.setattr(session.ClusterPool, "close", lambda self: closed.append(True))
    chaos_dir.makeconftest("")  # no fake runner: the plugin's own
    if ini:
        chaos_dir.makeini(f"[pytest]\n{ini}\n")
    write(chaos_dir, "scenarios/pass_one.yaml", scenario_yaml("pass_one"))
    result = run(chaos_dir, *args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: stop here: the runner was reached*"])
    [pool] = seen
    if pooled:
        assert isinstance(pool, session.ClusterPool) and pool.out_dir == chaos_dir.path / "runs"
        assert closed == [True]
    else:
        assert pool is None and closed == []
