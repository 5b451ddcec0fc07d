#!/usr/bin/env bash
# Build the wheel and prove that an ordinary (not editable) install of it works from an
# empty folder: `retrieve init`, an ingest of the bundled sample and a search that finds
# the running shoes. A fresh virtual environment, nothing from the source tree on the path.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d /tmp/retrieval-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip wheel --quiet --no-deps . -w "$work/dist"
rm -rf build retrieval.egg-info
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet "torch==2.13.0"   # the CPU build, before anything pulls CUDA
"$work/venv/bin/python" -m pip install --quiet "$work"/dist/retrieval-*.whl
mkdir "$work/empty"
cd "$work/empty"
for name in $(env | grep -o '^RETRIEVE_[A-Z_]*'); do unset "$name"; done
export HF_HUB_OFFLINE=1 XDG_CACHE_HOME="$work/cache"
bin="$work/venv/bin"
"$bin/python" -c 'import retrieval.store.db as d, sys; p = str(d.migrations_dir()); assert "site-packages" in p, p'
"$bin/retrieve" init
"$bin/retrieve" ingest --sample
found="$("$bin/retrieve" search "What are good shoes for jogging?" -k 1)"
echo "$found"
grep -q " p002 " <<<"$found" || { echo "check_wheel: the installed wheel did not find the running shoes" >&2; exit 1; }
"$bin/retrieve" verify
echo "check_wheel: the wheel installs and works from an empty folder" >&2
