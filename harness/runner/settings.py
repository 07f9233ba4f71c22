"""What one ``recchaos run`` (or one pytest scenario item) was asked to do: a frozen settings
object built once from options, and the scenario with those overrides applied and re-validated.
``dry_run`` and ``manifest`` are the CLI's ``--dry-run`` and ``--manifest``
(:mod:`harness.runner.dryrun`).

The option table :data:`RUN_OPTIONS` is shared by the CLI and the pytest plugin, so both speak
the same names, defaults and help. The plugin also reads each option from an environment
variable (:attr:`Option.env`) and an ini key (:attr:`Option.ini`); :meth:`Option.parse` turns
such a text into a value, or raises a usage error that says where the bad value came from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.model.errors import Problem, ScenarioError, UsageError
from harness.model.scenario import MAX_SEED, Scenario, load_scenario, scenario_from_dict
from harness.model.target import BACKENDS
from harness.sut.redis import parse_address

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_SLA_MS = 20.0
PYTEST_PROFILES = ("pr", "nightly")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _address(value: Any) -> bool:
    try:
        parse_address(str(value))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Option:
    """One option: the CLI flag, the pytest flag (its ini key and environment variable), its
    type, default and help, and what values are allowed."""

    name: str
    cli: str
    pytest: str
    type: Callable[[str], Any]
    default: Any
    help: str
    env: str
    allowed: str = "any value"
    valid: Callable[[Any], bool] = lambda value: True
    pytest_choices: tuple[str, ...] = ()

    @property
    def ini(self) -> str:
        """The ini key (pyproject ``[tool.pytest.ini_options]``): the pytest flag, underscored."""
        return self.pytest.lstrip("-").replace("-", "_")

    def parse(self, raw: Any, where: str) -> Any:
        """``raw`` (a text from the environment or an ini file, or a value from a marker) as
        this option's type; UsageError naming the value, ``where`` it came from and what is
        allowed."""
        try:
            value = raw if not isinstance(raw, str) else self.type(raw.strip())
        except (TypeError, ValueError):
            value = None
        choices = self.pytest_choices
        ok = value is not None and self.valid(value) and (not choices or value in choices)
        if not ok:
            allowed = "one of " + ", ".join(choices) if choices else self.allowed
            raise UsageError(
                f"invalid value {raw!r} for {self.pytest} from {where}; allowed: {allowed}"
            )
        return value


RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "seed",
        "--seed",
        "--chaos-seed",
        int,
        None,
        "seed for the request mix and generated faults (default: the scenario's)",
        env="RECCHAOS_SEED",
        allowed=f"an integer from 0 to {MAX_SEED}",
        valid=lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED,
    ),
    Option(
        "out_dir",
        "--out",
        "--chaos-out",
        Path,
        DEFAULT_RUNS_DIR,
        "directory that receives one run directory per run (default: ./runs)",
        env="RECCHAOS_OUT",
        allowed="a directory path",
        valid=lambda v: str(v) != "",
    ),
    Option(
        "rate",
        "--rate",
        "--chaos-rate",
        float,
        None,
        "requests/s for every non-pause load phase (default: the scenario's)",
        env="RECCHAOS_RATE",
        allowed="a number of requests/s above 0",
        valid=_positive,
    ),
    Option(
        "duration",
        "--duration",
        "--chaos-duration",
        float,
        None,
        "total load duration in seconds, phases scaled to fit (default: the scenario's)",
        env="RECCHAOS_DURATION",
        allowed="a number of seconds above 0",
        valid=_positive,
    ),
    Option(
        "profile",
        "--profile",
        "--chaos-profile",
        str,
        None,
        "scenario profile to apply: pr or nightly (default: none; in pytest: pr)",
        env="RECCHAOS_PROFILE",
        allowed="a profile name",
        valid=lambda v: bool(v),
        pytest_choices=PYTEST_PROFILES,
    ),
    Option(
        "sla_ms",
        "--sla-ms",
        "--sla-ms",
        float,
        None,
        f"latency SLA in milliseconds (default: the scenario's, {DEFAULT_SLA_MS:g})",
        env="RECCHAOS_SLA_MS",
        allowed="a number of milliseconds above 0",
        valid=_positive,
    ),
    Option(
        "backend",
        "--backend",
        "--chaos-backend",
        str,
        None,
        "how the bundled recommender runs: process (local processes) or docker (one "
        "container per component, docs/docker.md) (default: the scenario's, process)",
        env="RECCHAOS_BACKEND",
        allowed="one of " + ", ".join(BACKENDS),
        valid=lambda v: v in BACKENDS,
        pytest_choices=BACKENDS,
    ),
    Option(
        "redis_address",
        "--redis-address",
        "--chaos-redis-address",
        str,
        None,
        "HOST:PORT of the Redis the harness starts for a scenario with redis: true (process "
        "backend; default 127.0.0.1 and a free port; PORT 0 picks a free one)",
        env="RECCHAOS_REDIS_ADDRESS",
        allowed="HOST:PORT with PORT 0-65535, e.g. 127.0.0.1:6390",
        valid=_address,
    ),
)
OPTIONS_BY_NAME: dict[str, Option] = {opt.name: opt for opt in RUN_OPTIONS}


@dataclass(frozen=True)
class RunSettings:
    scenario_path: str
    seed: int | None = None
    out_dir: Path = DEFAULT_RUNS_DIR
    rate: float | None = None
    duration: float | None = None
    profile: str | None = None
    sla_ms: float | None = None
    progress: bool = True
    load_workers: int = 1
    replay: str | None = None  # the replay command to record (default: the `recchaos run` one)
    backend: str | None = None  # process | docker (default: the scenario's target)
    redis_address: str | None = None  # HOST:PORT of the Redis the harness starts
    dry_run: bool = False  # resolve and check, start nothing that injects (harness.runner.dryrun)
    manifest: Path | None = None  # with dry_run: a running target's manifest (nothing started)
    strict: bool = False  # a warning about what the run can test (its mix) is a usage error


def check_dry_run(settings: RunSettings) -> None:
    """``--manifest`` names a running target to check against: a dry run's option only."""
    if settings.manifest is not None and not settings.dry_run:
        raise UsageError(
            f"--manifest {settings.manifest} is only for --dry-run: a run starts (and stops) "
            "its own target; add --dry-run to check the scenario against that running target"
        )


def resolve_scenario(settings: RunSettings) -> Scenario:
    """Load, apply the overrides, validate again. Raises ScenarioError naming the option (a
    UsageError for an option that does not change the scenario)."""
    check_redis_address(settings.redis_address)
    scenario = load_scenario(settings.scenario_path, profile=settings.profile)
    return apply_overrides(scenario, settings)


def check_redis_address(value: str | None) -> None:
    if value is not None and not _address(value):
        opt = OPTIONS_BY_NAME["redis_address"]
        raise UsageError(f"invalid value {value!r} for {opt.cli}; allowed: {opt.allowed}")


def apply_overrides(scenario: Scenario, settings: RunSettings) -> Scenario:
    """``scenario`` with the settings' seed, SLA, rate and duration applied and validated."""
    given = (settings.seed, settings.rate, settings.duration, settings.sla_ms, settings.backend)
    if all(v is None for v in given):
        return scenario
    data = scenario.to_dict()
    data.pop("profiles", None)
    data.pop("profile", None)
    problems: list[Problem] = []
    if settings.seed is not None:
        data["seed"] = settings.seed
    if settings.sla_ms is not None:
        data["sla_ms"] = settings.sla_ms
    if settings.rate is not None:
        if settings.rate <= 0:
            problems.append(Problem("--rate", settings.rate, "a rate above 0 requests/s"))
        for phase in data["load"]:
            if phase["rate"] > 0:
                phase["rate"] = settings.rate
    if settings.duration is not None:
        total = sum(p["duration_s"] for p in data["load"])
        if settings.duration <= 0:
            problems.append(Problem("--duration", settings.duration, "a duration above 0 s"))
        else:
            for phase in data["load"]:
                phase["duration_s"] = phase["duration_s"] * settings.duration / total
    if settings.backend is not None:
        if settings.backend not in BACKENDS:
            problems.append(Problem("--backend", settings.backend, "one of " + ", ".join(BACKENDS)))
        elif data["target"].get("kind") != "recommender":
            problems.append(
                Problem(
                    "--backend",
                    settings.backend,
                    "no --backend with a generic target",
                    "the backend chooses how the bundled recommender runs; a generic target "
                    "runs its own commands",
                )
            )
        else:
            data["target"]["backend"] = settings.backend
    if problems:
        raise ScenarioError(scenario.source, problems)
    resolved = scenario_from_dict(data, scenario.source)
    return resolved
