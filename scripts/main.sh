#!/usr/bin/env bash
# The main job: set up, start the local recommender, send demo requests, stop everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
