"""The control token of a run: who may set and clear faults on what the run started.

Every control surface of a run requires it: the recommender servers' ``control`` op (the
request's ``token`` field), the fault proxy's control API (``Authorization: Bearer TOKEN``) and
the Redis the harness starts (its password). Whoever starts the components makes the token
(the harness for a run, ``recchaos sut up`` for a cluster of its own) and hands it over without
a command line, which every local user can read in ``/proc/PID/cmdline``:

* to the processes, in the environment (``/proc/PID/environ`` is readable only by the same user
  and root): ``RECCHAOS_CONTROL_TOKEN`` for the servers and the proxy,
  ``RECCHAOS_REDIS_PASSWORD`` for the gateway's Redis client; Redis gets it in a 0600 config
  file;
* to the tools that inject and heal faults, in a file only its owner can read (0600), named by
  the cluster manifest's ``control_token_file``: the watchdog reads it there after the harness
  died, never from the dead process.

The recommender keeps its own copy of these rules (``system_under_test/auth.py``; it never
imports the harness), held to the same names by a unit test.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from harness.model.errors import HarnessError

TOKEN_VARIABLE = "RECCHAOS_CONTROL_TOKEN"
REDIS_PASSWORD_VARIABLE = "RECCHAOS_REDIS_PASSWORD"
TOKEN_FILE_NAME = "control.token"
TOKEN_BYTES = 32  # 256 bits, as 64 hex digits
MAX_TOKEN_FILE = 4096


class TokenError(HarnessError):
    """The run's token file is missing, empty, unreadable or readable by others."""


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def token_env(token: str) -> dict[str, str]:
    """The variables that hand ``token`` to the servers, the proxy and the gateway's Redis
    client of a run (the Redis the harness starts has the token as its password)."""
    return {TOKEN_VARIABLE: token, REDIS_PASSWORD_VARIABLE: token}


def token_matches(expected: str | None, given: object) -> bool:
    """Constant-time comparison; no expected token, or a given one that is not a string,
    never matches."""
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(TOKEN_VARIABLE, "").strip()
    return value or None


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to ``path``, readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in ``path``. TokenError naming the file when it is missing, not a regular
    file, readable or writable by group or others (anyone could have read or replaced it),
    too large or empty."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise TokenError(f"cannot read the control token file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"control token file {path} is not a regular file")
        if info.st_mode & 0o077:
            raise TokenError(
                f"control token file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must "
                "be readable by its owner only (0600): chmod 600 it or start the cluster again"
            )
        data = os.read(fd, MAX_TOKEN_FILE + 1)
    finally:
        os.close(fd)
    token = data.decode(errors="replace").strip()
    if len(data) > MAX_TOKEN_FILE or not token or any(c.isspace() for c in token):
        raise TokenError(
            f"control token file {path} does not hold one token (a line of at most "
            f"{MAX_TOKEN_FILE} characters without spaces)"
        )
    return token


def manifest_token_file(manifest: Mapping[str, object], manifest_path: Path | None) -> Path | None:
    """The token file a cluster manifest names (``control_token_file``; a relative path is
    relative to the manifest's directory), or None when it names none."""
    value = manifest.get("control_token_file")
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    if not path.is_absolute() and manifest_path is not None:
        path = manifest_path.parent / path
    return path
