#!/usr/bin/env bash
# Audits the exact package set of ./.venv (what `scripts/setup.sh test` installed) for known vulnerabilities with
# pip-audit (PyPI's JSON API, or OSV with `--vulnerability-service osv`). Needs access to pypi.org or osv.dev:
#   bash scripts/audit.sh                 # writes .audit/requirements.txt, then audits it
#   bash scripts/audit.sh --vulnerability-service osv
# Exit 0: nothing known; 1: vulnerabilities (listed, with the fixed versions); 2: the audit could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "audit: run 'bash scripts/setup.sh test' first"; exit 2; }
mkdir -p .audit
[ -x .audit/venv/bin/pip-audit ] || { python3 -m venv .audit/venv && .audit/venv/bin/pip install -q pip-audit; } \
  || { echo "audit: could not install pip-audit"; exit 2; }
# The locked set: every installed distribution at its exact version (llmaas itself, editable, is not on PyPI).
.venv/bin/python -m pip freeze --exclude-editable > .audit/requirements.txt
out=$(.audit/venv/bin/pip-audit -r .audit/requirements.txt --no-deps --disable-pip --progress-spinner off "$@" 2>&1)
rc=$?
echo "$out"
if echo "$out" | grep -q "could not be audited"; then
  echo "audit: some packages could not be looked up (is pypi.org's JSON API reachable from here?)"
  exit 2
fi
exit $rc
