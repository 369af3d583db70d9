#!/usr/bin/env bash
# Every benchmark in bench/ (bench/bench_*.py), one after the other, each printing its figures next
# to a baseline measured in the same run. Figures also land in bench/out/*.json; bench/RESULTS.md
# records them with the machine and date. Needs the test set-up (torch is not needed).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh test
status=0
for bench in bench/bench_*.py; do
  echo "== $bench"
  start=$(date +%s)
  if ! .venv/bin/python "$bench"; then
    echo "bench: $bench FAILED" >&2
    status=1
  fi
  echo "== $bench: $(($(date +%s) - start)) s"
  echo
done
exit "$status"
