#!/usr/bin/env bash
# The README's main job: set up (idempotent), then tune the bundled private task end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
