#!/usr/bin/env bash
# Sets up everything (first run builds llama.cpp) and runs `llmaas serve` with the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/llmaas serve "$@"
