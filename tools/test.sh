#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up, lint, type-check, test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# One worker per core (RGT_TEST_WORKERS overrides; 0 runs in this process), each taking whole
# files so a module's emulator or sshd fixture starts once.
.venv/bin/python -m pytest -n "${RGT_TEST_WORKERS:-auto}" --dist loadfile "$@"
