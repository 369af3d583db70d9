#!/usr/bin/env bash
# Every benchmark in bench/ (bench/bench_*.py), one after the other, each printing its figures next
# to a baseline measured in the same run. Figures also land in bench/out/*.json; bench/RESULTS.md
# records them with the machine and date. The runtime set-up is enough (no test extras, no torch).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
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
