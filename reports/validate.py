"""What the JSON files of a run directory must look like, checked before anything renders them.

Each check raises :class:`Corrupt` naming the field path (``windows[2].histograms.response``),
what was found and what is expected; :mod:`reports.rundir` adds the file name and turns it into
a usage error (exit 2). Fields a newer writer adds are ignored; fields the reports use must have
the type the runner writes (numbers may be ``"inf"``/``"-inf"`` text and ``null``, as
:func:`harness.model.record.json_safe` writes them).
"""

from __future__ import annotations

from typing import Any

from harness.metrics.histogram import LatencyHistogram

HIST_TAGS = ("response", "service", "lag")
PERCENTILE_GROUPS = ("latency_ms", "latency_with_errors_ms", "service_ms")


class Corrupt(ValueError):
    """A field of a run directory's file is not what the runner writes."""


MISSING: Any = object()  # a required field that is absent


def need(d: dict[str, Any], key: str) -> Any:
    """``d[key]``, or :data:`MISSING` (reported as "nothing") when it is absent."""
    return d.get(key, MISSING)


def _show(value: Any) -> str:
    if value is MISSING:
        return "nothing (the field is missing)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(where: str, expected: str, value: Any) -> Corrupt:
    return Corrupt(f"{where}: expected {expected}, found {_show(value)}")


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "an object", value)
    return value


def seq(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, "a list", value)
    return value


def text(value: Any, where: str, null: bool = False) -> None:
    if not (isinstance(value, str) or (null and value is None)):
        raise _fail(where, "text" + (" or null" if null else ""), value)


def integer(value: Any, where: str, null: bool = False, minimum: int | None = None) -> None:
    if null and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(where, "an integer" + (" or null" if null else ""), value)
    if minimum is not None and value < minimum:
        raise _fail(where, f"an integer >= {minimum}", value)


def number(value: Any, where: str) -> None:
    """A number, ``"inf"``/``"-inf"`` text, or null (how json_safe writes floats)."""
    if value is None or value in ("inf", "-inf"):
        return
    real(value, where, 'a number, "inf" or null')


def real(value: Any, where: str, expected: str = "a number", null: bool = False) -> None:
    if null and value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _fail(where, expected + (" or null" if null else ""), value)


def histogram(value: Any, where: str) -> LatencyHistogram:
    text(value, where)
    try:
        h = LatencyHistogram.decode(value)
    except Exception as exc:  # noqa: BLE001 - the decoder raises several unrelated types
        raise Corrupt(
            f"{where}: not an encoded recchaos histogram ({type(exc).__name__}: {exc})"
        ) from None
    if h.overflow < 0 or h.failures < 0:
        raise _fail(where, "non-negative overflow and failure counts", value[:40])
    return h


# run.json -------------------------------------------------------------------------------------
def check_record(doc: dict[str, Any]) -> None:
    """The fields of a parsed ``run.json`` that reports read."""
    scenario = obj(doc.get("scenario", {}), "scenario")
    text(scenario.get("name", ""), "scenario.name", null=True)
    number(scenario.get("sla_ms"), "scenario.sla_ms")
    for i, phase in enumerate(seq(scenario.get("load", []), "scenario.load")):
        where = f"scenario.load[{i}].duration_s"
        real(obj(phase, f"scenario.load[{i}]").get("duration_s", 0), where)
    integer(need(doc, "seed"), "seed")
    text(need(doc, "status"), "status")
    text(doc.get("verdict"), "verdict", null=True)
    for key in ("started_wall", "ended_wall"):
        real(doc.get(key), key, null=True)
    number(doc.get("load_end_s"), "load_end_s")
    for key in ("scenario_path", "replay"):
        text(doc.get(key, ""), key)
    for key in ("git_commit", "profile"):
        text(doc.get(key), key, null=True)
    for key in ("versions", "host", "files"):
        obj(doc.get(key, {}), key)
    for key in ("errors", "warnings"):
        for i, e in enumerate(seq(doc.get(key, []), key)):
            text(e, f"{key}[{i}]")
    for i, e in enumerate(seq(doc.get("timeline", []), "timeline")):
        check_fault(obj(e, f"timeline[{i}]"), f"timeline[{i}]")
    for i, w in enumerate(seq(doc.get("windows", []), "windows")):
        check_window(obj(w, f"windows[{i}]"), f"windows[{i}]")
    for i, c in enumerate(seq(doc.get("checks", []), "checks")):
        check_check(obj(c, f"checks[{i}]"), f"checks[{i}]")
    if doc.get("halt") is not None:
        check_halt(obj(doc["halt"], "halt"), "halt")


def check_halt(h: dict[str, Any], where: str) -> None:
    """A guard's halt (``run.json``'s ``halt``, null when no guard tripped)."""
    for key in ("guard", "rule", "kind", "evidence"):
        text(need(h, key), f"{where}.{key}")
    for key in ("value", "limit"):
        number(h.get(key), f"{where}.{key}")
    real(need(h, "since_s"), f"{where}.since_s")
    integer(need(h, "trip_ns"), f"{where}.trip_ns")
    real(need(h, "trip_wall"), f"{where}.trip_wall")
    integer(h.get("healed_ns"), f"{where}.healed_ns", null=True)
    for key in ("healed", "heal_errors", "not_applied"):
        for i, item in enumerate(seq(h.get(key, []), f"{where}.{key}")):
            text(item, f"{where}.{key}[{i}]")


def check_fault(e: dict[str, Any], where: str) -> None:
    for key in ("kind", "target", "origin"):
        text(need(e, key), f"{where}.{key}")
    text(e.get("note", ""), f"{where}.note")
    obj(need(e, "params"), f"{where}.params")
    integer(need(e, "inject_ns"), f"{where}.inject_ns")
    integer(e.get("heal_ns"), f"{where}.heal_ns", null=True)
    real(need(e, "inject_wall"), f"{where}.inject_wall")
    real(e.get("heal_wall"), f"{where}.heal_wall", null=True)
    if not isinstance(e.get("verified", False), bool):
        raise _fail(f"{where}.verified", "true or false", e.get("verified"))


def check_window(w: dict[str, Any], where: str) -> None:
    win = obj(need(w, "window"), f"{where}.window")
    text(need(win, "name"), f"{where}.window.name")
    text(win.get("kind", ""), f"{where}.window.kind")
    for key in ("start_s", "end_s"):
        real(need(win, key), f"{where}.window.{key}")
    for key in ("count", "sent", "successes", "errors"):
        integer(w.get(key, 0), f"{where}.{key}", minimum=0)
    for key in ("error_ratio", "within_sla", "lag_p99_ms", "lag_max_ms"):
        number(w.get(key), f"{where}.{key}")
    for key in ("valid_share", "agreement_at_k", "ndcg_at_k", "cold_start_share"):
        number(w.get(key), f"{where}.{key}")
    integer(w.get("shed", 0), f"{where}.shed", minimum=0)
    for key in ("shed_share", "goodput_per_s", "served_p99_ms", "rejection_p99_ms"):
        number(w.get(key), f"{where}.{key}")
    answers = obj(w.get("answers", {}), f"{where}.answers")
    for tier, q in obj(answers.get("by_tier", {}), f"{where}.answers.by_tier").items():
        for key, value in obj(q, f"{where}.answers.by_tier.{tier}").items():
            number(value, f"{where}.answers.by_tier.{tier}.{key}")
    for group in PERCENTILE_GROUPS:
        for metric, value in obj(w.get(group, {}), f"{where}.{group}").items():
            number(value, f"{where}.{group}.{metric}")
    for tier, value in obj(w.get("tier_shares", {}), f"{where}.tier_shares").items():
        number(value, f"{where}.tier_shares.{tier}")
    hists = obj(w.get("histograms", {}), f"{where}.histograms")
    for tag, value in hists.items():
        histogram(value, f"{where}.histograms.{tag}")


def check_check(c: dict[str, Any], where: str) -> None:
    text(c.get("verdict"), f"{where}.verdict", null=True)
    for key in ("metric", "message", "where"):
        text(c.get(key, ""), f"{where}.{key}")
    text(c.get("window"), f"{where}.window", null=True)
    for key in ("value", "limit"):
        value = c.get(key)
        if not (value is None or isinstance(value, str)):
            number(value, f"{where}.{key}")


# details.json and load/histograms.json ----------------------------------------------------------
def check_details(doc: Any) -> dict[str, Any]:
    d = obj(doc, "(file)")
    for key in ("generator", "tier_cross_check", "answers"):
        if d.get(key) is not None:
            obj(d[key], key)
    for key in ("fault_problems", "unaccounted", "load_errors"):
        seq(d.get(key, []), key)
    stages = obj(d.get("gateway_stages_ms", {}), "gateway_stages_ms")
    for scope, inner in stages.items():
        for name, q in obj(inner, f"gateway_stages_ms.{scope}").items():
            where = f"gateway_stages_ms.{scope}.{name}"
            if isinstance(q, dict):
                for k, v in q.items():
                    number(v, f"{where}.{k}")
            else:
                number(q, where)
    return d


def check_load_histograms(doc: Any) -> dict[str, LatencyHistogram]:
    """``load/histograms.json`` (the whole load, every worker merged) -> histograms by tag."""
    d = obj(doc, "(file)")
    if d.get("unit", "us") != "us":
        raise _fail("unit", '"us"', d.get("unit"))
    out = {}
    for tag in HIST_TAGS:
        entry = obj(need(d, tag), tag)
        out[tag] = histogram(need(entry, "encoded"), f"{tag}.encoded")
    return out
