"""The recchaos pytest plugin: a thin adapter over the runner (the only module importing pytest).

What it adds to pytest:

- options, shared with ``recchaos run`` through :data:`harness.runner.settings.RUN_OPTIONS`:
  ``--chaos-seed``, ``--chaos-profile pr|nightly``, ``--chaos-out``, ``--sla-ms`` (and
  ``--chaos-rate``, ``--chaos-duration``); each also an ini key (``chaos_seed``, ``sla_ms``, ...)
  and an environment variable (``RECCHAOS_SEED``, ...). Resolved in a fixed order: the test's
  ``@pytest.mark.chaos(seed=..., ...)`` marker, the command line, the environment, the ini file,
  the default; a bad value is a usage error saying where it came from;
- markers ``chaos``, ``nightly`` (run only in the nightly profile), ``gpu``, ``docker``, ``root``
  (skipped with the reason where the machine lacks it);
- every ``scenarios/*.yaml`` as a test item (ini ``chaos_scenarios`` names the directories; a
  YAML file named on the command line is collected too): PASS passes, FAIL fails with the
  failing checks and ``Reproduce with: ...``, INCONCLUSIVE is skipped with the reason in the pr
  profile and fails in the nightly one (never a pass), a scenario whose only violations are the
  ones it states (``expect: violated``) is an expected failure (xfail), a usage error in the file
  is a collection error, a harness error is a test error;
- fixtures: ``recommender`` (a session cluster, options from ``recommender_options``), ``load``
  and ``chaos`` (see :mod:`harness.chaos`), returning :class:`harness.assertions.ChaosRun`;
  ``chaos_explore`` (a fault-schedule search, :mod:`harness.explore`: "no schedule within these
  limits breaks these SLOs", budget by profile);
- the hook ``pytest_recchaos_run_scenario(settings, log)``, which runs one scenario item (a
  conftest can replace the runner, as the plugin's own tests do).

Policy lives in the runner: which items share a cluster and when a shared one is discarded
(:mod:`harness.runner.session`). The runner and the cluster are imported lazily, inside hooks
and fixtures.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.model.errors import (
    EXIT_INTERRUPTED,
    HarnessError,
    Inconclusive,
    RecchaosError,
    UsageError,
)
from harness.runner.settings import (
    DEFAULT_SLA_MS,
    OPTIONS_BY_NAME,
    RUN_OPTIONS,
    Option,
    RunSettings,
)

MARKERS = {
    "chaos": "chaos(seed=, profile=, sla_ms=, rate=, duration=): a chaos test; the arguments "
    "override the options for this test",
    "nightly": "only in the nightly profile (--chaos-profile nightly)",
    "gpu": "needs a CUDA device",
    "docker": "needs a Docker engine",
    "root": "needs root (iptables, cgroups)",
}
DEFAULT_PROFILE = "pr"
SCENARIO_SUFFIXES = (".yaml", ".yml")
RUN_SLACK_S = 240.0  # cluster start-up, steady state, settle and teardown around the load


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosSettings:
    """The resolved options, and where each value came from (for messages)."""

    values: dict[str, Any]
    where: dict[str, str]

    @property
    def profile(self) -> str:
        return str(self.values["profile"] or DEFAULT_PROFILE)

    @property
    def nightly(self) -> bool:
        return self.profile == "nightly"

    def given(self, name: str) -> bool:
        return self.where[name] != "the default"

    def replay_flags(self) -> dict[str, str]:
        """Flags other than seed and profile that were set: the replay must repeat them."""
        flags = {
            OPTIONS_BY_NAME[n].pytest: f"{self.values[n]:g}"
            for n in ("sla_ms", "rate", "duration")
            if self.values[n] is not None
        }
        if self.values.get("backend") is not None:
            flags[OPTIONS_BY_NAME["backend"].pytest] = str(self.values["backend"])
        return flags


def _dest(opt: Option) -> str:
    return "recchaos_" + opt.name


def _lookup(
    config: pytest.Config, opt: Option, marker: dict[str, Any], node: str
) -> tuple[Any, str]:
    """marker > command line > environment > ini > default."""
    if opt.name in marker:
        where = f"@pytest.mark.chaos({opt.name}=...) on {node}"
        return opt.parse(marker[opt.name], where), where
    cli = config.getoption(_dest(opt))
    if cli is not None:
        where = f"the command line ({opt.pytest})"
        return _as_path(opt, opt.parse(cli, where), config.invocation_params.dir), where
    env = os.environ.get(opt.env, "")
    if env.strip():
        where = f"the environment variable {opt.env}"
        return _as_path(opt, opt.parse(env, where), config.invocation_params.dir), where
    ini = config.getini(opt.ini)
    if isinstance(ini, str) and ini.strip():
        where = f"the ini key {opt.ini} in {config.inipath or 'the ini file'}"
        return _as_path(opt, opt.parse(ini, where), config.rootpath), where
    return _as_path(opt, opt.default, config.rootpath), "the default"


def _as_path(opt: Option, value: Any, base: Path) -> Any:
    """Relative directories are relative to where they were given (the ini file's directory
    for the ini key and the default, the invocation directory otherwise)."""
    if opt.name == "out_dir" and value is not None and not Path(value).is_absolute():
        return base / value
    return value


def resolve(config: pytest.Config, node: pytest.Item | None = None) -> ChaosSettings:
    """The settings for ``node`` (its chaos marker first), or for the session."""
    marker = node.get_closest_marker("chaos") if node is not None else None
    kwargs = dict(marker.kwargs) if marker is not None else {}
    name = node.nodeid if node is not None else ""
    unknown = sorted(set(kwargs) - set(OPTIONS_BY_NAME))
    if unknown:
        raise UsageError(
            f"@pytest.mark.chaos on {name}: unknown argument {unknown[0]!r}; "
            f"allowed: {', '.join(OPTIONS_BY_NAME)}"
        )
    values, where = {}, {}
    for opt in RUN_OPTIONS:
        values[opt.name], where[opt.name] = _lookup(config, opt, kwargs, name)
    return ChaosSettings(values, where)


_SETTINGS = pytest.StashKey[ChaosSettings]()
_RESULTS = pytest.StashKey[list[dict[str, Any]]]()
_RUNNER = pytest.StashKey["SessionRunner"]()


def session_settings(config: pytest.Config) -> ChaosSettings:
    return config.stash[_SETTINGS]


def settings_for(item: pytest.Item) -> ChaosSettings:
    if item.get_closest_marker("chaos") is None:
        return session_settings(item.config)
    try:
        return resolve(item.config, item)
    except UsageError as exc:
        pytest.fail(str(exc), pytrace=False)


# -- hooks: options, markers, configuration -----------------------------------------------------


class RecchaosHookspecs:
    @pytest.hookspec(firstresult=True)
    def pytest_recchaos_run_scenario(self, settings: RunSettings, log: Any) -> Any:
        """Run one scenario item and return its :class:`harness.runner.run.RunOutcome`.

        The plugin's own implementation (``trylast``) calls :func:`harness.runner.run.run`."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(RecchaosHookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("recchaos", "recchaos chaos runs")
    for opt in RUN_OPTIONS:
        metavar = "|".join(opt.pytest_choices) if opt.pytest_choices else opt.name.upper()
        extra = f" [ini {opt.ini}, env {opt.env}]"
        if opt.name == "profile":
            help_text = "scenario profile: pr (default) or nightly" + extra
        else:
            help_text = opt.help + extra
        group.addoption(opt.pytest, dest=_dest(opt), default=None, metavar=metavar, help=help_text)
        parser.addini(opt.ini, opt.help, default="")
    group.addoption(
        "--chaos-fresh-cluster",
        action="store_true",
        default=None,
        help="start a recommender for every scenario item instead of sharing one per target "
        "[ini chaos_fresh_cluster]",
    )
    parser.addini(
        "chaos_fresh_cluster",
        "start a recommender for every scenario item (default: items share one per target)",
        type="bool",
        default=False,
    )
    parser.addini(
        "chaos_scenarios",
        "directories (relative to the rootdir) whose *.yaml files "
        "are collected as scenario items (default: scenarios)",
        type="args",
        default=["scenarios"],
    )


def pytest_configure(config: pytest.Config) -> None:
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    for name, text in MARKERS.items():
        if name not in known:
            config.addinivalue_line("markers", f"{name}: {text}")
    try:
        config.stash[_SETTINGS] = resolve(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[_RESULTS] = []
    fresh = config.getoption("--chaos-fresh-cluster") or config.getini("chaos_fresh_cluster")
    runner = SessionRunner(None if fresh else Path(config.stash[_SETTINGS].values["out_dir"]))
    config.stash[_RUNNER] = runner
    config.pluginmanager.register(runner, "recchaos-session-runner")


def pytest_unconfigure(config: pytest.Config) -> None:
    runner = config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.close()


def pytest_report_header(config: pytest.Config) -> str:
    s = session_settings(config)
    seed = s.values["seed"] if s.values["seed"] is not None else "each scenario's own"
    sla = s.values["sla_ms"] if s.values["sla_ms"] is not None else f"{DEFAULT_SLA_MS:g} ms"
    return f"recchaos: profile {s.profile}, seed {seed}, SLA {sla}, runs in {s.values['out_dir']}"


class SessionRunner:
    """The plugin's own ``pytest_recchaos_run_scenario`` (``trylast``), one per session: a
    scenario item runs through :func:`harness.runner.session.run_scenario`, sharing the
    session's :class:`~harness.runner.session.ClusterPool` (none with
    ``--chaos-fresh-cluster``: every item starts its own cluster)."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.pool: Any = None

    @pytest.hookimpl(trylast=True)
    def pytest_recchaos_run_scenario(self, settings: RunSettings, log: Any) -> Any:
        from harness.runner.session import run_scenario

        return run_scenario(settings, self.shared_pool(), log)

    def shared_pool(self) -> Any:
        """The session's pool, started on first use; None with ``--chaos-fresh-cluster``."""
        from harness.runner.session import ClusterPool

        if self.pool is None and self.out_dir is not None:
            self.pool = ClusterPool(self.out_dir)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


# -- markers: requirements and the nightly profile ----------------------------------------------


def missing_requirement(item: pytest.Item) -> str | None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        return "needs root (iptables, cgroups): run as root"
    if item.get_closest_marker("gpu") and not (
        shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists()
    ):
        return "needs a CUDA device (no nvidia-smi, no /dev/nvidia0)"
    if item.get_closest_marker("docker") and not (
        os.environ.get("DOCKER_HOST")
        or Path("/var/run/docker.sock").exists()
        or (os.geteuid() == 0 and shutil.which("dockerd"))
    ):
        return (
            "needs a Docker engine: DOCKER_HOST, /var/run/docker.sock, or root and dockerd "
            "(tests that start their own engine)"
        )
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    s = settings_for(item)
    if item.get_closest_marker("nightly") and not s.nightly:
        pytest.skip(
            f"nightly only: run with --chaos-profile nightly (profile {s.profile} "
            f"from {s.where['profile']})"
        )
    if not isinstance(item, ScenarioItem):  # a scenario item judges its own requirements
        reason = missing_requirement(item)
        if reason:
            pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """INCONCLUSIVE is never a pass: skipped with the reason in pr, failed in nightly."""
    try:
        return (yield)
    except Inconclusive as exc:
        if settings_for(item).nightly:
            raise
        pytest.skip(f"INCONCLUSIVE (skipped in the pr profile, failed in nightly): {exc}")


# -- scenario files ---------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in SCENARIO_SUFFIXES or not _is_scenario(parent.config, file_path):
        return None
    collector: pytest.Collector = ScenarioFile.from_parent(parent, path=file_path)
    return collector


def _is_scenario(config: pytest.Config, path: Path) -> bool:
    dirs = {(config.rootpath / d).resolve() for d in config.getini("chaos_scenarios")}
    if path.parent.resolve() in dirs:
        return True
    here = config.invocation_params.dir
    named = {
        (here / a.split("::")[0]).resolve()
        for a in config.invocation_params.args
        if not a.startswith("-")
    }
    return path.resolve() in named


class ScenarioFile(pytest.File):
    """One scenario YAML file: validated at collection, one item."""

    def collect(self) -> Iterator[pytest.Item]:
        s = session_settings(self.config)
        try:
            scenario = load_for_item(self._relpath(), s)
        except UsageError as exc:
            raise self.CollectError(str(exc)) from None
        item = ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)
        item.add_marker("chaos")
        if _needs_root(scenario):
            item.add_marker("root")
        if self.config.pluginmanager.hasplugin("timeout"):
            item.add_marker(pytest.mark.timeout(scenario.load_duration_s + RUN_SLACK_S))
        yield item

    def _relpath(self) -> str:
        return os.path.relpath(self.path, self.config.invocation_params.dir)


def load_for_item(shown: str, s: ChaosSettings) -> Any:
    """The scenario as the item will run it: the chosen profile (pr unless given; a scenario
    without any profile runs as written) and the overrides, validated."""
    from harness.model.scenario import load_scenario
    from harness.runner.settings import apply_overrides

    base = load_scenario(shown)
    profile = s.profile if base.profiles else None
    if profile is not None and profile not in base.profiles:
        raise UsageError(
            f"{shown}: profile {profile!r} (from {s.where['profile']}) is not "
            f"defined; the file has: {', '.join(base.profiles)}"
        )
    scenario = load_scenario(shown, profile=profile)
    if scenario.skip_reason:
        return scenario
    return _keep_profile(apply_overrides(scenario, _run_settings(shown, s, profile)), scenario)


def _keep_profile(resolved: Any, original: Any) -> Any:
    from dataclasses import replace

    return replace(resolved, profiles=original.profiles, profile=original.profile)


def _needs_root(scenario: Any) -> bool:
    from harness.model.faults import FAULT_KINDS

    kinds = {f.kind for f in scenario.faults}
    if scenario.fault_schedule is not None:
        kinds |= set(scenario.fault_schedule.kinds)
    return any(FAULT_KINDS[k].root for k in kinds)


def _run_settings(
    path: str, s: ChaosSettings, profile: str | None, replay: str | None = None
) -> RunSettings:
    v = s.values
    return RunSettings(
        scenario_path=path,
        seed=v["seed"],
        out_dir=Path(v["out_dir"]),
        rate=v["rate"],
        duration=v["duration"],
        profile=profile,
        sla_ms=v["sla_ms"],
        replay=replay,
        backend=v["backend"],
        redis_address=v["redis_address"],
    )


class ScenarioFailed(Exception):
    """The scenario's verdict was FAIL (or INCONCLUSIVE in the nightly profile)."""


class ScenarioHarnessError(Exception):
    """The harness or the machine failed during the run: not the SUT's fault."""


@dataclass
class Outcome:
    """What the item's setup found: a run outcome, or why nothing ran."""

    run: Any = None
    skipped: str | None = None
    inconclusive: str | None = None
    seconds: float = 0.0


class ScenarioItem(pytest.Item):
    """One scenario run: started in setup (a harness error there is a test error), judged in
    the call (PASS, FAIL, INCONCLUSIVE, expected violations)."""

    def __init__(self, *, scenario: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.outcome = Outcome()

    @property
    def profile(self) -> str | None:
        return self.scenario.profile

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, 0, f"scenario {self.scenario.name}"

    def replay(self) -> str:
        from harness.runner.provenance import pytest_replay

        s = session_settings(self.config)
        return pytest_replay(self.nodeid, self.scenario.seed, self.profile, s.replay_flags())

    def setup(self) -> None:
        if self.scenario.skip_reason:
            self.outcome.skipped = f"{self.profile} profile: {self.scenario.skip_reason}"
            return
        missing = missing_requirement(self)
        if missing:
            self.outcome.inconclusive = f"{self.scenario.name} {missing}; nothing was run"
            return
        shown = os.path.relpath(self.path, self.config.invocation_params.dir)
        settings = _run_settings(shown, session_settings(self.config), self.profile, self.replay())
        started = time.monotonic()
        run = self.ihook.pytest_recchaos_run_scenario(settings=settings, log=self._log)
        self.outcome.run = run
        self.outcome.seconds = time.monotonic() - started
        self._record_result()
        if run.interrupted:
            raise KeyboardInterrupt(run.message)
        if run.verdict is None and run.exit_code != 1:
            raise ScenarioHarnessError(
                self._text(f"harness error (exit {run.exit_code}): {run.message}")
            )

    def _log(self, line: str) -> None:
        print(line, flush=True)  # captured by pytest: shown with -s or under a failure

    def runtest(self) -> None:
        out, nightly = self.outcome, self.profile == "nightly"
        if out.skipped:
            raise pytest.skip.Exception(out.skipped, _use_item_location=True)
        if out.inconclusive:
            self._inconclusive(out.inconclusive, nightly)
        run = out.run
        if run.verdict is None:  # the SUT failed before it could be judged (exit 1)
            raise ScenarioFailed(self._text(f"FAIL: {run.message}"))
        verdict = run.verdict.value
        if verdict == "FAIL":
            raise ScenarioFailed(self._text("FAIL", "FAIL"))
        if verdict == "INCONCLUSIVE":
            self._inconclusive("", nightly)
            return
        expected = [c for c in self._checks() if c.get("expected_violation")]
        if expected:
            pytest.xfail(
                "SLO violated as the scenario expects: " + "; ".join(c["message"] for c in expected)
            )

    def _inconclusive(self, reason: str, nightly: bool) -> None:
        """Never a pass: failed in nightly, skipped (one line, with the replay) in pr."""
        if nightly:
            raise ScenarioFailed(
                self._text(
                    "INCONCLUSIVE, which fails in the nightly profile"
                    + (f": {reason}" if reason else ""),
                    "INCONCLUSIVE",
                )
            )
        found = [c["message"] for c in self._checks() if c["verdict"] == "INCONCLUSIVE"]
        text = "; ".join(([reason] if reason else []) + found)
        raise pytest.skip.Exception(
            f"INCONCLUSIVE (skipped in the pr profile, failed in nightly): {text} | "
            f"Reproduce with: {self.replay()}",
            _use_item_location=True,
        )

    def _checks(self) -> list[dict[str, Any]]:
        run = self.outcome.run
        return list(run.record.checks) if run is not None and run.record is not None else []

    def _text(self, headline: str, show: str | None = None) -> str:
        """The headline, the checks with verdict ``show``, the record and the replay line."""
        run = self.outcome.run
        lines = [
            f"scenario {self.scenario.name} ({self.profile or 'no'} profile, seed "
            f"{self.scenario.seed}): {headline}"
        ]
        checks = self._checks()
        shown = [c for c in checks if show is not None and c["verdict"] == show]
        lines += [f"  {c['verdict']:<12} {c['message']}" for c in shown]
        if show is not None and len(checks) > len(shown):
            lines.append(
                f"  ({len(checks) - len(shown)} other checks: "
                + ", ".join(sorted({c["verdict"] for c in checks if c not in shown}))
                + ")"
            )
        if run is not None and run.record is not None and run.record.errors:
            lines += [f"  error: {e}" for e in run.record.errors]
        if run is not None:
            lines.append(f"run record: {run.run_dir / 'run.json'}")
            lines.append(f"Reproduce with: {self.replay()}")
            lines.append(f"  (or: {_cli_replay(run, session_settings(self.config))})")
        else:
            lines.append(f"Reproduce with: {self.replay()}")
        return "\n".join(lines)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioFailed | ScenarioHarnessError | RecchaosError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def _record_result(self) -> None:
        run = self.outcome.run
        record = run.record
        if record is not None:
            try:
                from reports.junit import properties

                self.user_properties.extend(properties(record.to_dict()))
            except ImportError:
                pass
        self.config.stash[_RESULTS].append(
            {
                "nodeid": self.nodeid,
                "verdict": run.verdict.value if run.verdict else f"exit {run.exit_code}",
                "seconds": self.outcome.seconds,
                "run_dir": str(run.run_dir),
            }
        )


def _cli_replay(run: Any, s: ChaosSettings) -> str:
    """The same run through ``recchaos run``."""
    from harness.runner.provenance import replay_command

    rec = run.record
    if rec is None:
        return str(run.replay)
    v = s.values
    return replay_command(
        rec.scenario_path,
        rec.seed,
        rec.profile,
        v["rate"],
        v["duration"],
        v["sla_ms"],
        v["backend"],
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(_RESULTS, [])
    if not results:
        return
    terminalreporter.section("recchaos scenario runs")
    for r in results:
        terminalreporter.write_line(
            f"{r['verdict']:<12} {r['seconds']:6.1f} s  {r['nodeid']}  ({r['run_dir']})"
        )


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def recommender_options(pytestconfig: pytest.Config) -> Any:
    """The session cluster's options (override this fixture in a conftest to change them):
    4 shards of the tiny preset, two gateways behind the balancer ``lb`` (``up``'s default
    layout), Redis when ``redis-server`` is installed, the session SLA."""
    from harness.sut.recommender import RecommenderOptions
    from harness.sut.redis import redis_available

    values = session_settings(pytestconfig).values
    sla = values["sla_ms"] or DEFAULT_SLA_MS
    return RecommenderOptions(
        shards=4,
        preset="tiny",
        redis=redis_available(),
        sla_ms=sla,
        redis_address=values["redis_address"],
    )


@pytest.fixture(scope="session")
def recommender(recommender_options: Any, pytestconfig: pytest.Config) -> Iterator[Any]:
    """The recommender, started once for the session (a :class:`harness.sut.target.Target`:
    ``base_url``, ``manifest_path``, ``options``, ``component()``, ``restart()``) and always
    stopped at the end."""
    from harness.runner.session import session_workdir, shared_recommender

    out = Path(session_settings(pytestconfig).values["out_dir"])
    workdir = session_workdir(out, "pytest-session")
    with shared_recommender(recommender_options, workdir) as target:
        yield target


def seed_for(item: pytest.Item, s: ChaosSettings) -> int:
    """The option's seed, else one derived from the test's id (stable from run to run)."""
    seed = s.values["seed"]
    return int(seed) if seed is not None else zlib.crc32(item.nodeid.encode()) & 0x7FFFFFFF


@pytest.fixture
def load(recommender: Any, request: pytest.FixtureRequest) -> Any:
    """``load(rate=200, duration_s=15, *, phases=, faults=, slos=, ...)``: open-loop load
    against the session recommender; returns a ChaosRun (per-window statistics, assertions)."""
    from harness.chaos import Load, RunContext
    from harness.runner.provenance import pytest_replay

    item = request.node
    s = settings_for(item)
    seed = seed_for(item, s)
    replay = pytest_replay(item.nodeid, seed, s.profile, s.replay_flags())
    ctx = RunContext(
        target=recommender,
        out_dir=Path(s.values["out_dir"]),
        seed=seed,
        sla_ms=s.values["sla_ms"] or DEFAULT_SLA_MS,
        profile=s.profile,
        source=item.nodeid,
        replay=replay,
    )
    return Load(ctx)


@pytest.fixture
def chaos_explore_runner(request: pytest.FixtureRequest) -> Any:
    """How ``chaos_explore`` runs its examples: ``make_runner(scenario, workdir, log)``
    (override it in a conftest). By default the examples share the session's cluster with the
    scenario items of the same target (one start fewer), or without a session pool
    (``--chaos-fresh-cluster``) one cluster of their own (:func:`harness.explore.cluster.runner_for`)."""
    from harness.explore.cluster import PooledClusterRunner, runner_for
    from harness.runner.session import ClusterPool

    pool = request.config.stash[_RUNNER].shared_pool()
    redis_address = settings_for(request.node).values["redis_address"]

    def make_runner(scenario: Any, workdir: Path, log: Any) -> Any:
        options = ClusterPool.options_for(scenario, redis_address)
        if pool is None or options is None:
            return runner_for(scenario, workdir, log)
        return PooledClusterRunner(pool, options, log)

    return make_runner


@pytest.fixture
def chaos_explore(request: pytest.FixtureRequest, chaos_explore_runner: Any) -> Any:
    """``chaos_explore(scenario, *, budget=, time_budget_s=, seed=, shrink_budget=)``: search
    the scenario's fault schedules (its ``explore:`` limits) for one that breaks its SLOs
    (docs/explore.md). A failing schedule fails the test with the first and the minimal
    schedule, the failing checks and the replay lines; an INCONCLUSIVE exploration is skipped
    in the pr profile and fails in nightly. The profile sets the budget: a few schedules in pr,
    many at night (``PROFILE_BUDGETS``); returns the ``ExploreOutcome``."""
    from harness.explore.settings import ExploreSettings

    item = request.node
    s = settings_for(item)

    def explore(
        scenario: str | os.PathLike[str],
        *,
        budget: int | None = None,
        time_budget_s: float | None = None,
        seed: int | None = None,
        shrink_budget: int | None = None,
    ) -> Any:
        from harness.explore.settings import PROFILE_BUDGETS, PROFILE_SHRINK_BUDGETS

        path = _scenario_path(item.config, scenario)
        settings = ExploreSettings(
            scenario_path=path,
            out_dir=Path(s.values["out_dir"]),
            seed=seed if seed is not None else s.values["seed"],
            profile=_own_profile(path, s.profile),
            budget=budget if budget or time_budget_s else PROFILE_BUDGETS[s.profile],
            time_budget_s=time_budget_s,
            shrink_budget=(
                shrink_budget if shrink_budget is not None else PROFILE_SHRINK_BUDGETS[s.profile]
            ),
        )
        return _explored(settings, chaos_explore_runner)

    return explore


def _scenario_path(config: pytest.Config, scenario: str | os.PathLike[str]) -> str:
    """A relative path is relative to the rootdir; shown relative to the invocation dir."""
    path = Path(scenario)
    if not path.is_absolute():
        path = config.rootpath / path
    return os.path.relpath(path, config.invocation_params.dir)


def _own_profile(path: str, profile: str) -> str | None:
    """The session's profile when the scenario defines it, else none (it runs as written)."""
    from harness.model.scenario import load_scenario

    return profile if profile in load_scenario(path).profiles else None


def _explored(settings: Any, make_runner: Any) -> Any:
    """Run the exploration and turn its ending into the test's outcome."""
    from harness.explore.run import explore

    outcome = explore(settings, log=print, make_runner=make_runner)
    text = "\n".join(outcome.lines)
    if outcome.exit_code == EXIT_INTERRUPTED:
        raise KeyboardInterrupt(text)
    if outcome.verdict is None:
        raise HarnessError(text)
    if outcome.verdict.value == "FAIL":  # the verdict's value: the plugin does not import checks
        pytest.fail(text, pytrace=False)
    if outcome.verdict.value == "INCONCLUSIVE":
        raise Inconclusive(text)
    return outcome


@pytest.fixture
def chaos(load: Any) -> Any:
    """Schedule faults against the session recommender (``chaos.kill(...)``,
    ``chaos.latency(...)``, ...), then ``chaos.run(rate=..., duration_s=...)``."""
    from harness.chaos import Chaos

    return Chaos(load)
