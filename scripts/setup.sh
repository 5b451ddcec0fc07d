#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything retrieval and its tests need.
# torch is installed first, pinned: a bare requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# Byte-compile the package as a regular install does (an editable install leaves that to
# the first import, which some environments forbid): a cold `retrieve search` then never
# compiles its own source.
.venv/bin/python -m compileall -q retrieval
echo "Ready: .venv/bin/retrieve --help" >&2
