#!/usr/bin/env bash
# The whole test suite: lint, types, then unit and privileged integration tests.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
scripts/bootstrap.sh --test
echo "== ruff"; .venv/bin/ruff check src tests bench
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/pytest -q -rs "$@"
