#!/usr/bin/env bash
# Sets up everything and runs the whole test suite: lint, import contract, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
echo "== ruff"; ruff check src tests bench examples scripts
echo "== import contract"; lint-imports
echo "== pytest"; python -m pytest tests -q "$@"
