#!/usr/bin/env bash
# Set up (the package alone, without the test tools), ingest the bundled sample catalog
# into ./demo, and run two searches.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime
export HF_HUB_OFFLINE=1
export RETRIEVE_DATABASE_URL="sqlite:///$PWD/demo/retrieval.db" RETRIEVE_INDEX_DIR="$PWD/demo/index"
.venv/bin/retrieve ingest --sample
echo
echo '$ retrieve search "What are good shoes for jogging?"'
.venv/bin/retrieve search "What are good shoes for jogging?" -k 3
echo
echo '$ retrieve search "I need a shirt made of natural fabric."'
.venv/bin/retrieve search "I need a shirt made of natural fabric." -k 3
