"""The control token of a cluster: who may switch the servers' fault points.

Every shard copy and the region refuse their ``control`` op (docs/protocol.md) unless the
request's ``token`` field equals the token the server was started with. Whoever starts the
components makes the token (``up`` when nobody gave it one, the harness for a run) and hands it
over in the environment, never on a command line (``/proc/PID/cmdline`` is readable by every
local user; ``/proc/PID/environ`` only by the process's own user and root):

* ``RECCHAOS_CONTROL_TOKEN``: the token; a server started without it has its fault points
  switched off for good (every ``control`` request is refused);
* ``RECCHAOS_REDIS_PASSWORD``: the password the gateway's Redis client sends (the harness starts
  its Redis with the run's token as its password).

``up`` keeps the token beside its manifest in a file only its owner can read (mode 0600, named
by the manifest's ``control_token_file``), which is where a tool that injects faults, or heals
them after the harness died, reads it. The harness keeps its own copy of these rules
(``harness/auth.py``): the recommender never imports the harness.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

TOKEN_VARIABLE = "RECCHAOS_CONTROL_TOKEN"
REDIS_PASSWORD_VARIABLE = "RECCHAOS_REDIS_PASSWORD"
TOKEN_FILE_NAME = "control.token"
TOKEN_BYTES = 32  # 256 bits, as 64 hex digits


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def token_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The token this process was started with, or None (blank counts as none)."""
    value = (os.environ if env is None else env).get(TOKEN_VARIABLE, "").strip()
    return value or None


def redis_password_from_env(env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(REDIS_PASSWORD_VARIABLE, "")
    return value or None


def token_matches(expected: str | None, given: object) -> bool:
    """Constant-time comparison; no expected token, or a given one that is not a string,
    never matches."""
    if not expected or not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def write_token_file(path: Path, token: str) -> Path:
    """Write ``token`` to ``path``, readable by its owner only (0600), atomically: a reader
    sees the old file or the new one, never a half-written or world-readable one."""
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


def token_path(manifest: Path) -> Path:
    """Where ``up`` keeps the token of the cluster whose manifest is ``manifest``."""
    return manifest.resolve().parent / TOKEN_FILE_NAME


def ensure_token(token_file: Path) -> str:
    """The launcher's part: the token it was given (``RECCHAOS_CONTROL_TOKEN``) or a new one,
    put in this process's environment, which every component it starts inherits, and written
    to ``token_file`` (0600) for the tools that inject and heal faults."""
    token = token_from_env() or new_token()
    os.environ[TOKEN_VARIABLE] = token
    write_token_file(token_file, token)
    return token
