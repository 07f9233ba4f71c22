"""Bounded scenario input: hostile files and values are refused with a usage error that names
the limit, before any work that grows with them; the error formatter bounds its own work.

Pure: files in tmp_path (a FIFO included: it is opened without blocking), no subprocess. The
real CLI on the same files, with its peak memory and time, is tests/integration/
test_hostile_scenarios.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from harness.model import bounds
from harness.model.errors import EXIT_USAGE, MISSING, Problem, ScenarioError, show_value
from harness.model.scenario import load_scenario, scenario_from_dict
from harness.model.yamlio import YamlProblem, read_yaml

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "scenarios" / "primary_kill.yaml").read_text()


def laughs(levels: int = 9, fan: int = 9) -> str:
    """The billion-laughs document: ``fan ** (levels + 1)`` strings from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * fan)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def problem_of(path: Path) -> Problem:
    got = read_yaml(path)
    assert isinstance(got, YamlProblem), f"{path.name} was accepted: {show_value(got)}"
    return got.problem


def error_of(path: Path) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.exit_code == EXIT_USAGE
    return info.value


# -- the file ---------------------------------------------------------------------------------


def test_a_file_over_1_mib_is_refused_naming_its_size_and_the_limit(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("description: |\n" + ("  " + "x" * 98 + "\n") * 10_486)  # 1 MiB + a bit
    size = path.stat().st_size
    assert size > bounds.MAX_FILE_BYTES
    msg = str(error_of(path))
    assert f"got {size:,} bytes; allowed: at most 1,048,576 bytes (1 MiB)" in msg


def test_a_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "limit.yaml"
    text = GOOD + "\n# " + "x" * bounds.MAX_FILE_BYTES
    path.write_text(text[: bounds.MAX_FILE_BYTES])
    assert path.stat().st_size == bounds.MAX_FILE_BYTES
    assert load_scenario(path).name == "primary_kill"


def test_a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert "got a FIFO (named pipe); allowed: a regular file" in str(error_of(fifo))


def test_a_directory_and_a_device_are_not_scenarios(tmp_path):
    assert "got a directory; allowed: a regular file" in str(error_of(tmp_path))
    assert "got a character device; allowed: a regular file" in str(error_of(Path("/dev/null")))


def test_missing_and_non_utf8_files(tmp_path):
    assert "No such file or directory" in str(error_of(tmp_path / "nope.yaml"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert "(file): got byte 9; allowed: UTF-8 text" in str(error_of(latin))


# -- the document -----------------------------------------------------------------------------


def test_billion_laughs_is_refused_where_it_passes_the_limit(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs())
    p = problem_of(path)
    # a3 stands for 7,381 values, so a4's list passes 20,000 at its third *a3
    assert p.field == "line 5, column 20"
    assert "got more than 20,000 values" in p.describe()
    assert "alias (*name)" in p.hint


def test_aliases_within_the_limit_are_fine_and_merge_keys_count(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(laughs(levels=3))  # 9**4 = 6,561 strings
    assert isinstance(read_yaml(path), dict)
    merged = tmp_path / "merged.yaml"
    big = ", ".join(f"k{i}: {i}" for i in range(1000))  # 2,001 values per expansion
    merged.write_text(f"base: &b {{{big}}}\n" + "".join(f"m{i}: {{<<: *b}}\n" for i in range(12)))
    assert "got more than 20,000 values" in problem_of(merged).describe()


def test_text_repeated_by_aliases_is_bounded(tmp_path):
    path = tmp_path / "text.yaml"
    path.write_text(f"t: &t {'x' * 500_000}\nr: [{', '.join(['*t'] * 9)}]\n")
    assert "got more than 4,194,304 characters of text" in problem_of(path).describe()


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &loop [1, *loop]\n")
    assert "got a value that contains itself" in problem_of(path).describe()


def test_nesting_depth(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text(nested(bounds.MAX_DEPTH - 1))  # plus the top-level mapping: exactly the limit
    assert isinstance(read_yaml(ok), dict)
    deep = tmp_path / "deep.yaml"
    deep.write_text(nested(250))
    p = problem_of(deep)
    assert p.field == "line 1, column 35"
    assert p.describe().endswith(
        "got more than 32 nested levels; allowed: at most 32 levels of mappings and lists"
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("n: " + "9" * 5000 + "\n", "Exceeds the limit"),  # int() refuses > 4,300 digits
        ("d: 2001-13-45\n", "month must be in 1..12"),
        ("a: *nowhere\n", "found undefined alias"),
    ],
)
def test_values_yaml_cannot_construct_are_problems_not_tracebacks(tmp_path, text, fragment):
    path = tmp_path / "v.yaml"
    path.write_text(text)
    assert fragment in problem_of(path).describe()


# -- data built in Python ---------------------------------------------------------------------


def test_python_data_gets_the_same_limits():
    deep: dict = {}
    inner = deep
    for _ in range(250):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ScenarioError, match="more than 32 nested levels"):
        scenario_from_dict(deep, "api")
    row = ["lol"] * 10
    for _ in range(9):
        row = [row] * 10  # shared, not copied: 10**10 strings in 100 lists
    with pytest.raises(ScenarioError, match="more than 20,000 values"):
        scenario_from_dict({"name": row}, "api")
    loop: list = []
    loop.append(loop)
    with pytest.raises(ScenarioError, match="a value that contains itself"):
        scenario_from_dict({"load": loop}, "api")
    with pytest.raises(ScenarioError, match="more than 20,000 values"):
        scenario_from_dict({"load": list(range(10**6))}, "api")


def test_check_data_passes_every_shipped_scenario():
    import yaml

    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        assert bounds.check_data(yaml.safe_load(path.read_text())) is None, path.name


# -- the error formatter ----------------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@given(JSONISH)
@example("0" * 100 + "'")  # cut before its only single quote: still quoted as repr quotes it
@example(b"0" * 100 + b"'")
def test_show_value_is_repr_when_short_and_bounded_always(value):
    shown = show_value(value)
    assert len(shown) <= 80
    full = repr(value)
    assert shown == (full if len(full) <= 80 else full[:77] + "...")


def test_show_value_does_no_work_proportional_to_the_value():
    row: list = ["lol"] * 10
    for _ in range(9):
        row = [row] * 10
    assert show_value(row).startswith("[[[[[[...")  # 10**10 strings: would never finish
    assert show_value(10**6000) == "<an integer of 19932 bits>"  # repr() raises ValueError
    assert show_value("x" * 10**7) == "'" + "x" * 76 + "..."
    assert show_value(MISSING) == "missing"


def test_long_fields_and_hints_are_cut_and_problem_lists_capped():
    p = Problem("k" * 1000, 1, "a number", "h" * 1000)
    assert len(p.describe()) < 600
    err = ScenarioError("f.yaml", [Problem(f"load[{i}]", i, "a mapping") for i in range(500)])
    lines = str(err).splitlines()
    assert lines[0] == "f.yaml: 500 problems"
    assert len(lines) == 1 + 50 + 1 and lines[-1] == "  ... and 450 more"


def test_a_bad_file_still_names_field_value_and_allowed(tmp_path):
    """The bounded formatter keeps the messages that were already good."""
    path = tmp_path / "bad.yaml"
    data = json.loads(json.dumps(__import__("yaml").safe_load(GOOD)))
    data["faults"][0]["duration_s"] = -2
    path.write_text(json.dumps(data))
    assert "faults[0].duration_s: got -2; allowed: a number > 0 (seconds)" in str(error_of(path))
