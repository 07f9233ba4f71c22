#!/usr/bin/env bash
# Writes constraints.txt: the exact version of every package recchaos is tested with, resolved
# fresh from pyproject.toml's ranges (newest versions allowed) in a throwaway virtual environment.
# scripts/setup.sh installs with these constraints, so CI and every developer get the same set.
# Run it to move to newer versions, then run the tests and commit constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q '.[sut,dev]'
{
  echo "# Exact versions recchaos is tested with (scripts/lock.sh writes this file from"
  echo "# pyproject.toml's ranges; scripts/setup.sh installs with -c constraints.txt)."
  # A local version label (torch's +cpu) names a build, not a version: the index chooses it.
  "$tmp/venv/bin/python" -m pip freeze --exclude-editable | grep -v -i '^recchaos[= @]' | sed 's/+[a-z0-9.]*$//'
} >constraints.txt
echo "lock: wrote constraints.txt ($(grep -c '==' constraints.txt) packages)"
