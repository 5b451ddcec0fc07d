#!/usr/bin/env bash
# Set up a virtual environment in .venv: the package with its test tools (the default),
# or with --runtime the package alone (what scripts/demo.sh needs).
# torch is installed first, pinned: a bare requirement would pull a multi-GB CUDA build.
# Running it again is quick: the installs are skipped while pyproject.toml and this
# script are unchanged (the package itself is installed editable, so code changes need
# no reinstall), and a runtime set-up is satisfied by an earlier full one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
mode=test
case "${1:-}" in
    "") ;;
    --runtime) mode=runtime ;;
    *) echo "usage: $0 [--runtime]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.retrieval-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $(.venv/bin/python -V 2>&1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$want test" ] && { [ "$mode" = test ] || [ "$have" != "$want runtime" ]; }; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    if [ "$mode" = test ]; then
        .venv/bin/python -m pip install --quiet -e ".[test]"
    else
        .venv/bin/python -m pip install --quiet -e .
    fi
    echo "$want $mode" > "$stamp"
fi
# Byte-compile the package as a regular install does (an editable install leaves that to
# the first import, which some environments forbid): a cold `retrieve search` then never
# compiles its own source.
.venv/bin/python -m compileall -q retrieval
echo "Ready: .venv/bin/retrieve --help" >&2
