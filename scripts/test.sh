#!/usr/bin/env bash
# Set up (idempotent), lint, type-check, then run the whole test suite. Extra arguments go to pytest.
# The suite is the same everywhere (this is what .ci/run runs): it installs the optional Ray Serve extra
# so the Ray backend's tests run too. CBPT_EXTRAS= (empty) leaves it out; those tests then skip, each
# with its reason, and tests/test_optional_extras.py checks that every module still collects.
set -euo pipefail
cd "$(dirname "$0")/.."
export CBPT_EXTRAS="${CBPT_EXTRAS-ray}"
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # server/, client/ and common/ ([tool.mypy] in pyproject.toml)
exec .venv/bin/python -m pytest -q -ra "$@"
