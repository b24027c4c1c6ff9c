#!/usr/bin/env bash
# Prints the path of llama-cpp-python's source (its PyPI sdist, version $1) unpacked into a new temporary
# folder, with scripts/patches/*.patch applied to its vendored llama.cpp unless $2 is --unpatched.
# The caller removes the folder (the parent of the printed path).
set -euo pipefail
cd "$(dirname "$0")/.."
version="$1"
work=$(mktemp -d)
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" 2>&1 \
  | { grep -v -i warning || true; } >&2
tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
rm "$work"/llama_cpp_python-*.tar.gz
src=$(echo "$work"/llama_cpp_python-*)
if [ "${2:-}" != "--unpatched" ]; then
  for p in "$PWD"/scripts/patches/*.patch; do
    (cd "$src/vendor/llama.cpp" && git apply "$p")
  done
fi
echo "$src"
