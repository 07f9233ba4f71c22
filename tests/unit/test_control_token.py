"""The control token's pure rules: comparison, the 0600 file, where a manifest names it, and
the two copies (harness and recommender) agreeing on every name."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from harness import auth
from harness.inject.base import Component, InjectContext, make_injector
from harness.proxy.control import ControlApi, HttpError
from system_under_test import auth as sut_auth

TOKEN = "a" * 64


def test_the_harness_and_the_recommender_use_the_same_names():
    for name in ("TOKEN_VARIABLE", "REDIS_PASSWORD_VARIABLE", "TOKEN_FILE_NAME", "TOKEN_BYTES"):
        assert getattr(auth, name) == getattr(sut_auth, name), name
    assert len(auth.new_token()) == len(sut_auth.new_token()) == 2 * auth.TOKEN_BYTES
    assert auth.new_token() != auth.new_token()


@pytest.mark.parametrize("match", [auth.token_matches, sut_auth.token_matches])
def test_token_matches_only_the_same_string(match):
    assert match(TOKEN, TOKEN)
    for given in (None, "", TOKEN[:-1], TOKEN + "a", TOKEN.upper(), 0, b"a" * 64, [TOKEN]):
        assert not match(TOKEN, given), given
    assert not match(None, TOKEN) and not match("", "")  # no expected token: nothing matches


def test_token_file_is_0600_and_read_back(tmp_path):
    path = auth.write_token_file(tmp_path / "run" / "control.token", TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.read_token_file(path) == TOKEN
    auth.write_token_file(path, "b" * 64)  # replaced atomically, still 0600
    assert auth.read_token_file(path) == "b" * 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["control.token"]  # no temporary left


def test_a_token_file_others_could_read_is_refused(tmp_path):
    path = auth.write_token_file(tmp_path / "control.token", TOKEN)
    for mode in (0o644, 0o640, 0o606):
        os.chmod(path, mode)
        with pytest.raises(auth.TokenError, match=rf"{path} has mode 0{mode:o}; .*0600"):
            auth.read_token_file(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "does not hold one token"), (b"two words\n", "does not hold one token"),
     (b"x" * 5000, "does not hold one token")],
)  # fmt: skip
def test_a_bad_token_file_is_refused_naming_it(tmp_path, content, why):
    path = tmp_path / "control.token"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(auth.TokenError, match=why) as info:
        auth.read_token_file(path)
    assert str(path) in str(info.value)


def test_missing_linked_or_odd_token_files_are_refused(tmp_path):
    with pytest.raises(auth.TokenError, match="cannot read the control token file .*missing"):
        auth.read_token_file(tmp_path / "missing")
    real = auth.write_token_file(tmp_path / "real.token", TOKEN)
    (tmp_path / "link.token").symlink_to(real)
    with pytest.raises(auth.TokenError, match="cannot read"):
        auth.read_token_file(tmp_path / "link.token")  # someone else's file by a link: no
    (tmp_path / "dir.token").mkdir(mode=0o700)
    with pytest.raises(auth.TokenError, match="not a regular file"):
        auth.read_token_file(tmp_path / "dir.token")


def test_a_manifest_names_its_token_file_and_heal_actions_name_it_too(tmp_path):
    token_file = auth.write_token_file(tmp_path / "control.token", TOKEN)
    manifest = tmp_path / "manifest.json"
    comp = {"name": "shard-0-primary", "role": "primary", "address": "127.0.0.1:1", "pid": None}
    manifest.write_text(json.dumps({"components": [comp], "control_token_file": "control.token"}))
    ctx = InjectContext.from_manifest(manifest, proxy_url="http://127.0.0.1:1")
    assert ctx.token_file == token_file and ctx.token() == TOKEN
    app = make_injector("app_error", "shard-0-primary", {"rate": 0.5}, ctx)
    assert app.heal_action() == {
        "action": "app_clear",
        "address": "127.0.0.1:1",
        "token_file": str(token_file),
    }
    net = make_injector("latency", "shard-0-primary", {"delay_ms": 5}, ctx)
    assert net.heal_action()["token_file"] == str(token_file)
    assert TOKEN not in json.dumps([app.heal_action(), net.heal_action()])
    bare = InjectContext(components={"x": Component("x", "primary", None, "127.0.0.1:1")})
    assert bare.token() is None and bare.token_action() == {}


def test_ensure_token_keeps_a_given_token_or_makes_one(tmp_path, monkeypatch):
    monkeypatch.delenv(sut_auth.TOKEN_VARIABLE, raising=False)
    path = sut_auth.token_path(tmp_path / "manifest.json")
    made = sut_auth.ensure_token(path)
    assert os.environ[sut_auth.TOKEN_VARIABLE] == made and auth.read_token_file(path) == made
    monkeypatch.setenv(sut_auth.TOKEN_VARIABLE, TOKEN)
    assert sut_auth.ensure_token(path) == TOKEN and auth.read_token_file(path) == TOKEN


@pytest.mark.parametrize(
    ("header", "ok"),
    [({"authorization": f"Bearer {TOKEN}"}, True), ({"authorization": f"bearer  {TOKEN}"}, True),
     ({}, False), ({"authorization": ""}, False), ({"authorization": TOKEN}, False),
     ({"authorization": f"Basic {TOKEN}"}, False), ({"authorization": "Bearer x"}, False)],
)  # fmt: skip
def test_proxy_control_api_authorization(header, ok):
    api = ControlApi(proxy=None, token=TOKEN)  # type: ignore[arg-type]
    api.authorize("GET", "/healthz", {}, ("127.0.0.1", 1))  # liveness needs no token
    if ok:
        api.authorize("POST", "/routes/a/faults", header, ("127.0.0.1", 1))
        return
    with pytest.raises(HttpError) as info:
        api.authorize("POST", "/routes/a/faults", header, ("127.0.0.1", 1))
    assert info.value.status == 401 and api.refused == 1
    with pytest.raises(ValueError, match="needs a token"):
        ControlApi(proxy=None, token="")  # type: ignore[arg-type]


def test_token_file_path_sits_beside_the_manifest(tmp_path):
    assert sut_auth.token_path(tmp_path / "m.json") == tmp_path.resolve() / "control.token"
    assert auth.manifest_token_file({"control_token_file": "t"}, tmp_path / "m.json") == Path(
        tmp_path / "t"
    )
    assert auth.manifest_token_file({}, None) is None
