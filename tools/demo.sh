#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/rgt lint
.venv/bin/rgt render vastai onstart -o out/onstart.sh
