"""deploy/compose.yaml against the Compose Specification's JSON schema, and its health checks.

The schema is the compose-spec project's ``schema/compose-spec.json`` as vendored by
``check-jsonschema`` (a dev dependency from PyPI, which pins the file with its SHA-256 beside it
and names its origin, github.com/compose-spec/compose-spec, in its schema catalog); this machine
reaches only package registries, so the schema comes from the installed package, checked against
that hash. The file is read as Docker Compose reads it (merge keys ``<<`` resolved). Beyond the
schema: every service has a health check that probes the port its own command listens on, and
every dependency waits for a healthy service.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
VENDOR = "check_jsonschema.builtin_schemas.vendor"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    raw = resources.files(VENDOR).joinpath("compose-spec.json").read_bytes()
    expected = resources.files(VENDOR).joinpath("sha256/compose-spec.sha256").read_text()
    assert hashlib.sha256(raw).hexdigest() == expected.strip(), "vendored schema changed"
    from check_jsonschema.catalog import SCHEMA_CATALOG

    assert "compose-spec/compose-spec" in SCHEMA_CATALOG["compose-spec"]["url"]
    doc: dict[str, Any] = json.loads(raw)
    assert doc["title"] == "Compose Specification"
    return doc


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return sorted(
        f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(doc)
    )


def test_compose_validates_against_the_compose_spec_schema(schema, compose):
    assert errors(schema, compose) == []


@pytest.mark.parametrize(
    "service, key, value",
    [
        ("gateway", "depends_on", {"redis": {"condition": "service_up"}}),
        ("redis", "healthcheck", {"test": ["CMD", "true"], "intervall": "5s"}),
        ("region", "healthcheck", {"test": ["CMD", "true"], "retries": [3]}),
    ],
)
def test_the_schema_refuses_a_broken_service(schema, compose, service, key, value):
    """The validator really checks health checks and dependencies (so a pass means something)."""
    broken = copy.deepcopy(compose)
    broken["services"][service][key] = value
    assert errors(schema, broken), f"{service}.{key} = {value!r} was accepted"


def listens_on(service: dict[str, Any]) -> str:
    """The port a service's command listens on (``--port N``)."""
    command = [str(c) for c in service["command"]]
    return command[command.index("--port") + 1]


def test_every_service_has_a_health_check_of_its_own_port(compose):
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no health check"
        test = [str(t) for t in check["test"]]
        assert test[0] == "CMD", f"{name}: {test}"
        port = listens_on(service)
        if test[1] == "redis-cli":
            assert test[test.index("-p") + 1] == port and test[-1] == "ping", name
            continue
        assert test[1:5] == ["python", "-m", "system_under_test", "probe"], name
        assert test[5] == f"127.0.0.1:{port}", f"{name} probes {test[5]}, listens on {port}"
        if "--http" in test:  # the gateway: its liveness endpoint
            assert test[test.index("--http") + 1] == "/healthz", name
        for key in ("interval", "timeout", "start_period", "start_interval"):
            assert re.fullmatch(r"\d+(ms|s|m)", check[key]), (name, key, check[key])


def test_every_dependency_waits_for_a_healthy_service(compose):
    services = compose["services"]
    gateway = services["gateway"]
    command = [str(c) for c in gateway["command"]]
    called = {a.split(":")[0] for a in command if re.fullmatch(r"[a-z0-9-]+:\d+", a)}
    called |= {u.split("//")[1].split(":")[0] for u in command if u.startswith("redis://")}
    assert set(gateway["depends_on"]) == called  # every component the gateway calls, no other
    for name, service in services.items():
        for dep, how in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on an unknown service {dep}"
            assert how == {"condition": "service_healthy"}, f"{name} -> {dep}: {how}"
            assert "healthcheck" in services[dep], f"{dep} has no health check to wait for"


def test_the_probe_refuses_an_address_that_is_not_host_port(capsys):
    from system_under_test.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["probe", "shard-0-primary"])
    assert info.value.code == 2
    assert "'shard-0-primary' is not HOST:PORT (a port from 1 to 65535)" in capsys.readouterr().err
