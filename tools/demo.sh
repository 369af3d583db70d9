#!/usr/bin/env bash
# The README's first command, from a fresh clone: set up the runtime (.venv, rsync, OpenSSH), then
# rehearse a whole interruptible rental on the embedded vast.ai emulator (`rgt demo`). No account,
# no network, nothing billed. Extra args go to `rgt demo` (e.g. --yes, --json, --dir DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec .venv/bin/rgt demo "$@"
