"""``recchaos run --junit FILE``: the JUnit XML built from a run record carries exactly the
``recchaos.*`` properties the pytest plugin writes, and the verdict as the test case's result."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from harness.model.record import read_record
from reports.junit import junit_xml, properties, write_junit
from reports.synthetic import Synth, write_run


def record_of(tmp_path, **kw) -> dict:
    run = write_run(tmp_path / "r", Synth(**kw))
    return read_record(run / "run.json").to_dict()


def case(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "testsuites"
    [suite] = root
    [tc] = suite.findall("testcase")
    return tc


def test_pass_has_the_plugin_properties_and_no_result_element(tmp_path):
    record = record_of(tmp_path)
    tc = case(junit_xml(record, 0, "verdict PASS", tmp_path / "r"))
    assert tc.get("name") == "synthetic_kill" and tc.get("classname") == "synthetic"
    got = [(p.get("name"), p.get("value")) for p in tc.find("properties")]
    assert got == properties(record)
    assert tc.find("failure") is None and tc.find("error") is None and tc.find("skipped") is None
    assert "Reproduce with: recchaos run synthetic.yaml --seed 7" in tc.find("system-out").text


def test_fail_is_a_failure_naming_the_failed_checks(tmp_path):
    record = record_of(tmp_path, slow=4.0)
    root = ET.fromstring(junit_xml(record, 1, "verdict FAIL", tmp_path / "r"))
    assert root.get("failures") == "1" and root[0].get("failures") == "1"
    failure = case(junit_xml(record, 1, "verdict FAIL", tmp_path / "r")).find("failure")
    assert failure.get("type") == "FAIL" and "exceeds the SLO of 20 ms" in failure.get("message")


@pytest.mark.parametrize(
    ("status", "verdict", "code", "element", "kind"),
    [
        ("complete", "INCONCLUSIVE", 3, "skipped", "INCONCLUSIVE"),
        ("incomplete", None, 4, "error", "exit 4"),
        ("killed", "PASS", 4, "error", "exit 4"),
    ],
)
def test_other_endings(tmp_path, status, verdict, code, element, kind):
    record = record_of(tmp_path)
    record.update(status=status, verdict=verdict, errors=["HarnessError: the load stalled"])
    tc = case(junit_xml(record, code, "stalled", tmp_path / "r"))
    result = tc.find(element)
    assert result is not None and result.get("type") == kind
    if element == "error":
        assert "the load stalled" in result.get("message")


def test_write_junit_is_atomic_and_parses(tmp_path):
    record = json.loads((write_run(tmp_path / "r", Synth()) / "run.json").read_text())
    path = write_junit(tmp_path / "out" / "junit.xml", record, 0, "ok", tmp_path / "r")
    assert ET.parse(path).getroot().get("tests") == "1"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["junit.xml"]
