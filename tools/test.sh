#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up, lint, type-check, test. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers per core (RGT_TEST_WORKERS overrides; 0 runs in this process), each taking whole
# files so a module's emulator or sshd fixture starts once. Most tests wait (boxes booting,
# sshd, polls), so a core holds two: on 2 cores, 12 of the slowest files, back to back at a
# load of 3-6 from other work on the machine, took 290 s with 4 workers and 306 s with 3.
# tests/conftest.py orders the files longest first (--no-loadscope-reorder keeps that order: xdist
# would sort them by their number of tests) and hands out the tests of its SPREAD files one by one.
.venv/bin/python -m pytest -n "${RGT_TEST_WORKERS:-$((2 * $(nproc)))}" --dist loadfile \
  --no-loadscope-reorder "$@"
