"""The fault registry is the one definition of a fault kind: the docs' fault tables, scenario
validation, ``recchaos scenarios show``, the fault proxy's specs and the injectors all agree with
it, for every kind and every backend it names. Nothing here needs a list of kinds of its own:
adding a kind to the registry (and its injector) is enough for these tests to cover it."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import cli
from harness.inject.base import (
    HEAL_ACTIONS,
    Component,
    InjectContext,
    load_factory,
    make_injector,
)
from harness.model import fault_table
from harness.model.errors import ScenarioError
from harness.model.fault_kinds import (
    COMPONENT_SETS,
    FAULT_KINDS,
    MECHANISMS,
    FaultKind,
    allowed_targets,
)
from harness.model.scenario import scenario_from_dict
from harness.model.target import BACKENDS, RecommenderTarget
from harness.model.validate import Bad
from harness.proxy.config import FAULT_KINDS as PROXY_KINDS
from harness.proxy.config import parse_fault

ROOT = Path(__file__).resolve().parents[2]
KIND_BACKENDS = [(k, b) for k, spec in FAULT_KINDS.items() for b in spec.backends]


def sample_params(kind: FaultKind) -> dict[str, Any]:
    """A value for every required parameter: the first of a few that its converter accepts."""
    out = {}
    for name, p in kind.params.items():
        if p.required:
            out[name] = next(v for v in (1.0, 0.5, 1) if _accepts(p.conv.check, v))
    return out


def _accepts(check: Any, value: Any) -> bool:
    try:
        check(value)
    except Bad:
        return False
    return True


def model_target(backend: str) -> RecommenderTarget:
    return RecommenderTarget(shards=1, preset="tiny", redis=True, backend=backend)


def context(backend: str) -> InjectContext:
    """Every component of a one-shard recommender with redis, as a manifest would name them."""
    comps = {}
    for i, name in enumerate(model_target(backend).component_names()):
        role = name.rpartition("-")[2] if name.startswith("shard-") else name
        address = f"127.0.0.1:{7000 + i}"
        comps[name] = Component(name, role, None, address, container=f"c-{name}")
    return InjectContext(
        components=comps, proxy_url="http://127.0.0.1:1", backend=backend, run_id="t"
    )


def scenario(kind: str, backend: str, target: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "t",
        "seed": 1,
        "target": {"kind": "recommender", "shards": 1, "preset": "tiny", "redis": True}
        | ({"backend": backend} if backend != "process" else {}),
        "load": [{"name": "main", "rate": 100, "duration_s": 30}],
        "faults": [{"kind": kind, "target": target, "at_s": 10, "duration_s": 5, "params": params}],
    }


# -- the registry itself ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", FAULT_KINDS.values(), ids=lambda k: k.name)
def test_every_record_is_complete(kind: FaultKind) -> None:
    assert kind.mechanism in MECHANISMS and kind.does and kind.heal and kind.backends
    assert set(kind.backends) <= set(BACKENDS)
    for backend in kind.backends.values():
        assert backend.targets in COMPONENT_SETS and backend.heal_actions
    for name, p in kind.params.items():
        assert p.doc and p.conv.allowed, f"{kind.name}.{name} is undocumented"
        if not p.required:  # a default is itself allowed by the parameter's limits
            assert p.conv.check(p.default) == p.default, f"{kind.name}.{name}"


def test_heal_actions_named_by_the_registry_exist() -> None:
    named = {a for k in FAULT_KINDS.values() for b in k.backends.values() for a in b.heal_actions}
    assert named <= set(HEAL_ACTIONS)


# -- the injectors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "backend"), KIND_BACKENDS)
def test_every_kind_has_an_injector_that_takes_the_complete_params(kind: str, backend: str) -> None:
    spec = FAULT_KINDS[kind]
    entry = spec.backends[backend]
    assert callable(load_factory(entry.injector))
    target = allowed_targets(kind, model_target(backend))[0]
    inj = make_injector(kind, target, sample_params(spec), context(backend))
    assert type(inj).__module__ == entry.injector.partition(":")[0]
    assert (inj.kind, inj.target) == (kind, target)
    assert dict(inj.params) == {**spec.defaults(), **sample_params(spec)}
    action = inj.heal_action()
    assert action["action"] in (*entry.heal_actions, "none"), action
    inj.heal()  # never applied: healing is harmless


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_backend_the_registry_does_not_name_refuses_the_kind(kind: str) -> None:
    spec = FAULT_KINDS[kind]
    for backend in set(BACKENDS) - set(spec.backends):
        target = next(iter(context(backend).components))
        inj = make_injector(kind, target, sample_params(spec), context(backend))
        with pytest.raises(Exception, match=rf"{kind} needs the .* backend"):
            inj.apply()
        assert not allowed_targets(kind, model_target(backend))


def _default_reads(path: Path) -> list[str]:
    """``params.get(name, default)``-like calls: an injector reading a default of its own."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "setdefault", "pop")
            and ast.unparse(node.func.value).endswith("params")
            and len(node.args) + len(node.keywords) >= 2
        ):
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_injector_reads_a_default_of_its_own() -> None:
    modules = sorted((ROOT / "harness" / "inject").glob("*.py"))
    assert len(modules) > 5
    assert [hit for m in modules for hit in _default_reads(m)] == []


# -- validation and scenarios show --------------------------------------------------------------


@pytest.mark.parametrize(("kind", "backend"), KIND_BACKENDS)
def test_validation_and_show_fill_in_the_registry_defaults(
    kind: str, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = FAULT_KINDS[kind]
    target = allowed_targets(kind, model_target(backend))[0]
    data = scenario(kind, backend, target, sample_params(spec))
    expected = {**spec.defaults(), **sample_params(spec)}
    assert scenario_from_dict(data).faults[0].params == expected
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["scenarios", "show", str(path)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["fault_plan"][0]["params"] == expected


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_validation_names_each_required_parameter_and_the_allowed_targets(kind: str) -> None:
    spec = FAULT_KINDS[kind]
    backend = next(iter(spec.backends))
    allowed = allowed_targets(kind, model_target(backend))
    for name in (n for n, p in spec.params.items() if p.required):
        params = {k: v for k, v in sample_params(spec).items() if k != name}
        with pytest.raises(ScenarioError) as exc:
            scenario_from_dict(scenario(kind, backend, allowed[0], params))
        assert exc.value.field == f"faults[0].params.{name}" and "got missing" in str(exc.value)
    others = set(model_target(backend).component_names()) - set(allowed)
    for name in sorted(others)[:1]:
        with pytest.raises(ScenarioError) as exc:
            scenario_from_dict(scenario(kind, backend, name, sample_params(spec)))
        assert exc.value.field == "faults[0].target" and allowed[0] in str(exc.value)


# -- the fault proxy ----------------------------------------------------------------------------


def test_the_proxy_takes_the_registry_proxy_kinds_with_their_defaults() -> None:
    proxied = {k: v for k, v in FAULT_KINDS.items() if v.mechanism == "proxy"}
    assert set(PROXY_KINDS) == set(proxied)
    for kind, spec in proxied.items():
        fault = parse_fault({"kind": kind, **sample_params(spec)})
        expected = {**spec.defaults(), **sample_params(spec)}
        assert {**fault.params, "direction": fault.direction} == expected


# -- the docs -------------------------------------------------------------------------------------


def test_the_docs_fault_tables_are_the_registry() -> None:
    doc = (ROOT / "docs" / "scenario-format.md").read_text()
    assert fault_table.render() in doc, "docs/scenario-format.md: run scripts/fault_table.py"
    for kind in FAULT_KINDS.values():
        assert f"| `{kind.name}` | {kind.does} |" in doc
        for name, p in kind.params.items():
            assert f"| `{kind.name}` | `{name}` | {p.conv.allowed} |" in doc


def test_the_docs_name_the_kinds_a_generic_target_supports() -> None:
    doc = " ".join((ROOT / "docs" / "scenario-format.md").read_text().split())
    found = re.search(r"A generic target supports [^(]*\(([^)]*)\)", doc)
    assert found, "docs/scenario-format.md no longer says which faults a generic target supports"
    named = re.findall(r"`([a-z_]+)`", found.group(1))
    any_component = [k for k, v in FAULT_KINDS.items() if v.backends.get("process") and
                     v.backends["process"].targets == "any"]  # fmt: skip
    assert named == any_component


def test_the_readme_names_every_kind() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(r"Fault kinds: (.*?)Reports:", readme)
    assert found, "README.md lost its 'Fault kinds:' paragraph"
    assert set(re.findall(r"`([a-z_]+)`", found.group(1))) == set(FAULT_KINDS)


def test_the_docker_page_lists_the_kinds_the_docker_backend_runs() -> None:
    page = (ROOT / "docs" / "docker.md").read_text()
    table = page[page.index("| kind | on a container |") :].split("\n\n")[0]
    named: set[str] = set()
    for row in table.splitlines()[2:]:
        for name in re.findall(r"`([a-z_*]+)`", row.split("|")[1]):
            named |= {k for k in FAULT_KINDS if re.fullmatch(name.replace("*", ".*"), k)}
    assert named == {k for k, v in FAULT_KINDS.items() if "docker" in v.backends}


def test_the_docker_docs_list_exactly_the_kinds_with_a_docker_backend():
    """docs/docker.md describes each kind's container mechanism by hand; it must cover every
    kind the registry gives a docker backend and reject exactly the others."""
    import re
    from pathlib import Path

    from harness.model.fault_kinds import FAULT_KINDS

    text = (Path(__file__).resolve().parents[2] / "docs" / "docker.md").read_text()
    table = text[text.index("| kind | on a container |") :].split("\n\n", 1)[0]
    listed: set[str] = set()
    for row in table.splitlines()[2:]:
        for name in re.findall(r"`([a-z_*]+)`", row.split("|")[1]):
            prefix = name.rstrip("*")
            listed |= (
                {k for k in FAULT_KINDS if k.startswith(prefix)} if name.endswith("*") else {name}
            )
    on_docker = {k for k, fk in FAULT_KINDS.items() if "docker" in fk.backends}
    assert listed == on_docker, (sorted(listed - on_docker), sorted(on_docker - listed))
    rejected = text[text.index("There is no userspace fault proxy") :].split("are rejected", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", rejected)) == set(FAULT_KINDS) - on_docker
