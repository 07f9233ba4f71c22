#!/usr/bin/env bash
# Installs everything recchaos needs on a fresh Debian machine with Python 3.11:
# Debian packages (as root; skipped with a note otherwise) and a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(redis-server iptables chromium docker.io)  # chromium: the report browser test;
# docker.io: the docker backend's tests start a private dockerd (tests/integration/dockerd.py)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # No service is started by the install: the tests start (and stop) their own servers.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: not root, cannot install ${missing[*]}; tests that need them will be skipped" >&2
  fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# torch==2.13.0 is pinned in pyproject.toml (the CPU build); a looser range pulls a CUDA build.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[sut,dev]'
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
