#!/usr/bin/env bash
# Builds llama.cpp's C++ `llama-server` from the llama.cpp that llama-cpp-python vendors (its PyPI sdist: the
# same version and the same CMake flags as the llmaas engine), for bench/serving.py's `llama-server` target.
#   bash scripts/build-llama-server.sh      -> ~/.cache/llmaas/llama-server/bin/llama-server (~10 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA_VERSION=$(sed -n 's/^LLAMA_VERSION=//p' scripts/setup.sh)
out="${LLMAAS_LLAMA_SERVER_DIR:-$HOME/.cache/llmaas/llama-server}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$work"
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# shellcheck disable=SC2046
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF $(bash scripts/llama-cmake-args.sh) >/dev/null
cmake --build "$work/build" --target llama-server -j "$(nproc)"
mkdir -p "$out/bin"
cp "$work"/build/bin/llama-server "$out/bin/"
echo "built $out/bin/llama-server"
