"""Judging answer-quality SLOs (``valid_share``, ``agreement_at_k``, ``ndcg_at_k``) in a window.

Same rules as every window metric (:func:`harness.checks.judge.judge`): not enough evidence in
the window (too few requests, a lagging generator, an unverified fault) is INCONCLUSIVE; so is
a window with no answer to measure (none checked, or none served at the SLO's tier, or no
reference for its users), since a mean over nothing proves nothing.

Agreement and NDCG are means over a sample of answers (the users a window's fallbacks happened to
serve), so a miss by less than sampling noise is not a failure: a mean on the wrong side of the
limit by less than :data:`Z` standard errors (the answers' standard deviation over the square root
of their count) is INCONCLUSIVE, and it needs at least ``min_samples`` answers (default
:data:`MIN_ANSWERS`; for these metrics the SLO's ``min_samples`` counts answers measured at its
tier, not requests). A floor can therefore sit near what the tier's model scores offline without
failing by chance, and a clearly broken tier fails even on a few dozen answers. An invalid answer is
a fact, not a sample: ``valid_share`` has no such allowance. Messages name the metric as the
scenario writes it, the tier, the value, the window, the limit and where the SLO is written, e.g.
"agreement_at_k 0.0421 steady window [3.0 s, 15.0 s] is below the SLO of at least 0.99
(scenarios/steady_state.yaml, slos[6]); 2,391 answers measured in the window".
"""

from __future__ import annotations

import math

from harness.checks import text
from harness.checks.judge import evidence_problem, judged
from harness.checks.verdict import CheckResult, Verdict
from harness.metrics.quality import TierQuality
from harness.metrics.stats import WindowStats
from harness.model.slo import Evidence, SLOSpec

Z = 3.0  # one-sided, about 99.9%: a mean this far on the wrong side is not sampling noise
MIN_ANSWERS = 10  # answers a mean of agreement or NDCG needs before it is judged

_VERBS = {
    ("at_most", True): "is within the SLO of at most",
    ("at_most", False): "exceeds the SLO of at most",
    ("below", True): "is below the SLO of below",
    ("below", False): "is not below the SLO of below",
    ("at_least", True): "meets the SLO of at least",
    ("at_least", False): "is below the SLO of at least",
    ("above", True): "is above the SLO of above",
    ("above", False): "is not above the SLO of above",
}


def value_text(value: float, limit: float | None = None) -> str:
    """A quality value to 4 decimals, more where that would print the limit itself."""
    if math.isnan(value):
        return "n/a"
    shown = f"{value:.4f}".rstrip("0").rstrip(".")
    if limit is not None and value != limit and shown == value_text(limit):
        shown = f"{value:.6f}".rstrip("0").rstrip(".")
    return shown


def name_of(slo: SLOSpec) -> str:
    return f"{slo.metric} ({slo.tier} answers)" if slo.tier else slo.metric


def judge_quality(
    slo: SLOSpec, stats: WindowStats, *, where: str, sla_ms: float, evidence: Evidence
) -> CheckResult:
    """Judge one answer-quality SLO in one window."""
    value = stats.answer_metric(slo.metric, slo.tier)
    q = stats.quality.tier(slo.tier)
    name, window = name_of(slo), stats.window.describe()
    asks = f"the SLO asks for {slo.bound_text()} {value_text(slo.limit)}"
    reason = evidence_problem(stats, evidence, sla_ms)
    if reason is None and math.isnan(value):
        reason = _nothing_measured(slo, q.checked)
    counted = q.checked if slo.metric == "valid_share" else q.measured
    needed = slo.min_samples or (1 if slo.metric == "valid_share" else MIN_ANSWERS)
    if reason is None and counted < needed:
        at = f"{slo.tier} " if slo.tier else ""
        reason = (
            f"only {text.count(counted)} {at}answers {_counted(slo)}, fewer than the"
            f" {text.count(needed)} needed to judge a mean"
        )
    if reason is not None:
        message = (
            f"{name} {window} cannot be judged: {reason} ({where}); measured"
            f" {value_text(value)}, {asks}"
        )
        return CheckResult(
            Verdict.INCONCLUSIVE, message, value, slo.limit, stats.window.name, where, slo.metric
        )
    holds = slo.holds(value)
    verb = _VERBS[(slo.bound, holds)]
    message = (
        f"{name} {value_text(value, slo.limit)} {window} {verb} {value_text(slo.limit)}"
        f" ({where}); {_tally(slo, stats)}"
    )
    noise = _within_noise(slo, value, q)
    if not holds and noise and not slo.expects_violation:
        message += f", but within sampling noise: {noise}; more answers would decide"
        return CheckResult(
            Verdict.INCONCLUSIVE, message, value, slo.limit, stats.window.name, where, slo.metric
        )
    return judged(slo, holds, message, value, stats.window.name, where)


def _within_noise(slo: SLOSpec, value: float, q: TierQuality) -> str:
    """Why a missed limit may be sampling noise (the mean Z standard errors towards the limit
    meets it), or "" when it is not, or for ``valid_share``."""
    if slo.metric == "valid_share":
        return ""
    sd = q.agreement_sd if slo.metric == "agreement_at_k" else q.ndcg_sd
    if math.isnan(sd) or q.measured < 1:
        return ""
    se = sd / math.sqrt(q.measured)
    upward = slo.bound in ("at_least", "above")
    edge = value + Z * se if upward else value - Z * se
    if not slo.holds(edge):
        return ""
    sign = "+" if upward else "-"
    return (
        f"sd {value_text(sd)} over {text.count(q.measured)} answers, mean {sign} {Z:g} standard"
        f" errors = {value_text(edge)}"
    )


def _counted(slo: SLOSpec) -> str:
    return "checked" if slo.metric == "valid_share" else "measured"


def _nothing_measured(slo: SLOSpec, checked: int) -> str:
    served = f" served at tier {slo.tier}" if slo.tier else ""
    if slo.metric == "valid_share" or not checked:
        return f"no answer{served} was checked in the window"
    return (
        f"none of the {text.count(checked)} answers{served} could be measured (invalid, cold"
        " starts, or users the reference does not cover)"
    )


def _tally(slo: SLOSpec, stats: WindowStats) -> str:
    q = stats.quality.tier(slo.tier)
    if slo.metric != "valid_share":
        return f"{text.count(q.measured)} answers measured in the window"
    out = f"{text.count(q.valid)} of {text.count(q.checked)} answers valid"
    codes = stats.quality.codes if not slo.tier else {}
    if codes:
        worst = sorted(codes.items(), key=lambda kv: -kv[1])[:3]
        out += " (invalid: " + ", ".join(f"{k} {text.count(v)}" for k, v in worst) + ")"
    return out
