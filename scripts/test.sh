#!/usr/bin/env bash
# Set up (idempotent), lint, type-check, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # server/, client/ and common/ ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest -q -ra "$@"
