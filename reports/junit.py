"""JUnit from a run record: the ``recchaos.*`` properties the pytest plugin attaches to a
scenario's test case, and the whole JUnit XML file ``recchaos run --junit FILE`` writes, with the
same properties, for CI systems that run the CLI without pytest.

The plugin calls :func:`properties` with the run record (``RunRecord.to_dict()`` or the parsed
``run.json``) and appends each pair to the test item's ``user_properties``
(``item.user_properties.extend(properties(record))`` or ``record_property(name, value)`` per pair);
``pytest --junitxml=FILE`` then writes them as ``<property name=... value=...>`` of that test case.
Names are stable, prefixed ``recchaos.``; values are text. Appending to ``user_properties``
directly writes them whatever ``junit_family`` is (the ``record_property`` fixture warns under the
default ``xunit2``, whose schema has no test-case properties; ``junit_family = "xunit1"`` keeps
the file schema-valid).
"""

from __future__ import annotations

import math
import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PREFIX = "recchaos."


def _text(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.6g}"
    return "" if v is None else str(v)


def properties(record: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(name, value), ...]``: scenario, seed, verdict, replay, then per window and check,
    the halt (when a guard tripped) and per fault."""
    scenario = record.get("scenario") or {}
    out = [
        ("scenario", scenario.get("name", "")),
        ("scenario_path", record.get("scenario_path", "")),
        ("profile", record.get("profile") or ""),
        ("seed", record.get("seed")),
        ("verdict", record.get("verdict") or ""),
        ("status", record.get("status", "")),
        ("replay", record.get("replay", "")),
        ("git_commit", record.get("git_commit") or ""),
        ("sla_ms", scenario.get("sla_ms")),
        ("faults", len(record.get("timeline") or [])),
        ("errors", " | ".join(record.get("errors") or [])),
    ]
    for w in record.get("windows") or []:
        name = (w.get("window") or {}).get("name", "?")
        lat = w.get("latency_with_errors_ms") or {}
        for metric in ("p50", "p95", "p99"):
            out.append((f"window[{name}].{metric}_ms", lat.get(metric)))
        out.append((f"window[{name}].requests", w.get("count")))
        out.append((f"window[{name}].error_ratio", w.get("error_ratio")))
    for i, c in enumerate(record.get("checks") or []):
        out.append(
            (f"check[{i}].{c.get('metric', '')}", f"{c.get('verdict')}: {c.get('message', '')}")
        )
    halt = record.get("halt")
    if isinstance(halt, dict):
        trip = halt.get("trip_ns")
        at = f" at {trip / 1e9:.3f} s" if isinstance(trip, int) else ""
        out.append(("halt", f"{halt.get('guard')}: {halt.get('rule')}{at}"))
    for i, e in enumerate(record.get("timeline") or []):
        heal = e.get("heal_ns")
        span = f"{e.get('inject_ns', 0) / 1e9:.3f}-" + (
            "never" if heal is None else f"{heal / 1e9:.3f}"
        )
        out.append(
            (
                f"fault[{i}]",
                f"{e.get('kind')}({e.get('target')}) {span} s verified={e.get('verified')}",
            )
        )
    return [(PREFIX + k, _text(v)) for k, v in out]


def _outcome(record: dict[str, Any], exit_code: int, message: str) -> tuple[str, str, str] | None:
    """``(element, type, message)`` for the test case's result; None when it passed.

    FAIL is a ``failure``; INCONCLUSIVE is ``skipped`` (never a pass; the exit code says 3, as
    the pytest plugin skips it in the pr profile); a run without a verdict is an ``error``."""
    verdict = record.get("verdict")
    bad = [c for c in record.get("checks") or [] if c.get("verdict") not in ("PASS", None)]
    detail = "; ".join(str(c.get("message", "")) for c in bad if c.get("verdict") == verdict)
    if record.get("status") == "complete" and verdict == "PASS" and exit_code == 0:
        return None
    if record.get("status") == "complete" and verdict == "FAIL":
        return "failure", "FAIL", f"FAIL: {detail or message}"
    if record.get("status") == "complete" and verdict == "INCONCLUSIVE":
        return "skipped", "INCONCLUSIVE", f"INCONCLUSIVE: {detail or message}"
    errors = " | ".join(record.get("errors") or []) or message
    return "error", f"exit {exit_code}", f"run {record.get('status', '?')}: {errors}"


def junit_xml(
    record: dict[str, Any], exit_code: int, message: str, run_dir: str | os.PathLike[str]
) -> str:
    """One test suite with one test case: the run, its properties and its result."""
    scenario = record.get("scenario") or {}
    name = str(scenario.get("name") or "scenario")
    path = str(record.get("scenario_path") or "")
    started, ended = record.get("started_wall") or 0.0, record.get("ended_wall") or 0.0
    seconds = f"{max(float(ended) - float(started), 0.0):.3f}" if started and ended else "0"
    result = _outcome(record, exit_code, message)
    counts = {"failures": "0", "errors": "0", "skipped": "0"}
    if result is not None:
        counts[{"failure": "failures", "error": "errors", "skipped": "skipped"}[result[0]]] = "1"
    head = {"name": "recchaos", "tests": "1", "time": seconds, **counts}
    suites = ET.Element("testsuites", head)
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(started or 0)))
    host = str((record.get("host") or {}).get("hostname") or socket.gethostname())
    suite = ET.SubElement(suites, "testsuite", {**head, "timestamp": when, "hostname": host})
    classname = Path(path).with_suffix("").as_posix().strip("/").replace("/", ".") or "recchaos"
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=seconds)
    if path:
        case.set("file", path)
    props = ET.SubElement(case, "properties")
    for key, value in properties(record):
        ET.SubElement(props, "property", name=key, value=value)
    replay = f"run record: {Path(run_dir) / 'run.json'}\nReproduce with: {record.get('replay', '')}"
    if result is not None:
        tag, kind, text = result
        ET.SubElement(case, tag, message=text[:1000], type=kind).text = f"{text}\n{replay}"
    ET.SubElement(case, "system-out").text = replay
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def write_junit(
    path: str | os.PathLike[str],
    record: dict[str, Any],
    exit_code: int,
    message: str,
    run_dir: str | os.PathLike[str],
) -> Path:
    """Write :func:`junit_xml` to ``path`` by atomic replace (its directory is created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(junit_xml(record, exit_code, message, run_dir), encoding="utf-8")
    os.replace(tmp, out)
    return out
