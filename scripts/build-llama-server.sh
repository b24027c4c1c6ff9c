#!/usr/bin/env bash
# Builds llama.cpp's C++ `llama-server` from the llama.cpp that llama-cpp-python vendors (its PyPI sdist: the
# same version and the same CMake flags as the llmaas engine), for bench/serving.py's `llama-server` targets.
#   bash scripts/build-llama-server.sh            as a user would run it (no patches)
#                                                  -> ~/.cache/llmaas/llama-server/bin/llama-server
#   bash scripts/build-llama-server.sh --patched  with scripts/patches/ applied, as llmaas's engine is built
#                                                  -> ~/.cache/llmaas/llama-server-patched/bin/llama-server
# Each takes ~10 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=$(sed -n 's/^LLAMA_VERSION=//p' scripts/setup.sh)
if [ "${1:-}" = "--patched" ]; then
  src=$(bash scripts/llama-source.sh "$LLAMA_VERSION")
  out="${LLMAAS_LLAMA_SERVER_DIR:-$HOME/.cache/llmaas/llama-server-patched}"
else
  src=$(bash scripts/llama-source.sh "$LLAMA_VERSION" --unpatched)
  out="${LLMAAS_LLAMA_SERVER_DIR:-$HOME/.cache/llmaas/llama-server}"
fi
work=$(dirname "$src")
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC2046
cmake -S "$src/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF $(bash scripts/llama-cmake-args.sh) >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc)"
mkdir -p "$out/bin"
cp "$work"/build/bin/llama-server "$out/bin/"
echo "built $out/bin/llama-server"
