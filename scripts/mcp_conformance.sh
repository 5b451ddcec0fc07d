#!/usr/bin/env bash
# The official MCP conformance suite (@modelcontextprotocol/conformance, pinned below)
# against `retrieve mcp --transport http --allow-writes` over a throwaway store of the
# sample documents, on a free port of 127.0.0.1. Runs the server scenarios that apply to
# an application server, by name; any of them failing fails the script. The server is
# stopped by its pid and the folder removed on exit. Needs only node/npm and the npm
# registry (the runner needs Node >= 22, which npx fetches as the `node` package).
# See docs/mcp.md#conformance.
#
# Server scenarios left out (conformance 0.1.16), and why they do not apply: they test
# the SDKs' "everything" reference server, which must have particular tools, prompts and
# resources, or features this server does not offer (and does not declare among its
# capabilities, so refusing them with "Method not found" is the correct answer):
#   logging-set-level              no `logging` capability: the server sends no log notifications
#   completion-complete            no `completions` capability (and no prompts to complete)
#   tools-call-simple-text         needs tool test_simple_text; it "passes" here only because
#                                  the SDK's "Unknown tool" error result has text content
#   tools-call-image               needs tool test_image_content (image content)
#   tools-call-audio               needs tool test_audio_content (audio content)
#   tools-call-embedded-resource   needs tool test_embedded_resource
#   tools-call-mixed-content       needs tool test_multiple_content_types
#   tools-call-with-logging        needs tool test_tool_with_logging and `logging`
#   tools-call-with-progress       needs tool test_tool_with_progress (progress notifications)
#   tools-call-sampling            needs tool test_sampling: the server never asks the client's LLM
#   tools-call-elicitation         needs tool test_elicitation: the server never asks the user
#   elicitation-sep1034-defaults   needs tool test_elicitation_sep1034_defaults (elicitation)
#   elicitation-sep1330-enums      needs tool test_elicitation_sep1330_enums (elicitation)
#   json-schema-2020-12            needs tool json_schema_2020_12_tool with a fixed schema
#   server-sse-polling             needs tool test_reconnection, which closes its SSE stream
#                                  mid-call (SEP-1699 resumability; no event store here)
#   resources-read-text            needs resource test://static-text; the server has no resources
#   resources-read-binary          needs resource test://static-binary
#   resources-templates-read       needs template test://template/{id}/data
#   resources-subscribe            no resources, capability resources.subscribe is false
#   resources-unsubscribe          same
#   prompts-get-simple             needs prompt test_simple_prompt; the server has no prompts
#   prompts-get-with-args          needs prompt test_prompt_with_arguments
#   prompts-get-embedded-resource  needs prompt test_prompt_with_embedded_resource
#   prompts-get-with-image         needs prompt test_prompt_with_image
set -euo pipefail
cd "$(dirname "$0")/.."

RUNNER=@modelcontextprotocol/conformance@0.1.16
RUNNER_NODE=node@22
APPLIED=(
    server-initialize            # initialize / initialized handshake, server info, version
    ping                         # ping answers {}
    tools-list                   # every tool has a name, description and inputSchema
    tools-call-error             # calling an unknown tool gives a result with isError and a message
    resources-list               # resources/list answers (an empty list)
    prompts-list                 # prompts/list answers (an empty list)
    server-sse-multiple-streams  # a session, and concurrent POSTs on it each get an SSE stream
    dns-rebinding-protection     # a foreign Host/Origin is refused with 4xx, localhost accepted
)

retrieve="$PWD/.venv/bin/retrieve"
python="$PWD/.venv/bin/python"
tmp="$(mktemp -d /tmp/retrieval-mcp-conformance.XXXXXX)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

export HF_HUB_OFFLINE=1 RETRIEVE_PROGRESS=false RETRIEVE_MODEL=hash-384
export RETRIEVE_DATABASE_URL="sqlite:///$tmp/retrieval.db" RETRIEVE_INDEX_DIR="$tmp/index"
# The store's folder is the working directory, so that no ./config.yaml is read.
(cd "$tmp" && "$retrieve" ingest --sample >"$tmp/ingest.log" 2>&1) || {
    cat "$tmp/ingest.log" >&2; exit 1; }

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port/mcp"
(cd "$tmp" && exec "$retrieve" mcp --transport http --port "$port" --allow-writes) >"$tmp/server.log" 2>&1 &
server_pid=$!

# Wait (30 s at most) until the server answers HTTP at all; any status will do.
if ! "$python" - "$url" "$server_pid" <<'EOF'
import os, sys, time, urllib.error, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
EOF
then
    echo "mcp_conformance: the server did not come up at $url" >&2
    cat "$tmp/server.log" >&2
    exit 1
fi

# One npx call (bounded) runs every applied scenario; a scenario's output is shown only
# when it fails. The results are written into the throwaway folder.
mkdir -p "$tmp/results"
set +e
(cd "$tmp" && CONFORMANCE_URL="$url" CONFORMANCE_OUT="$tmp/results" \
    CONFORMANCE_SCENARIOS="${APPLIED[*]}" npm_config_loglevel=error npm_config_update_notifier=false \
    timeout 300 npx --yes -p "$RUNNER_NODE" -p "$RUNNER" -c '
        failed=""
        for s in $CONFORMANCE_SCENARIOS; do
            if ! conformance server --url "$CONFORMANCE_URL" --scenario "$s" \
                    -o "$CONFORMANCE_OUT" >"$CONFORMANCE_OUT/$s.log" 2>&1; then
                failed="$failed $s"; cat "$CONFORMANCE_OUT/$s.log" >&2
            fi
        done
        echo "$failed" >"$CONFORMANCE_OUT/failed"
        test -z "$failed"')
rc=$?
set -e

left_out=24
if [[ $rc -eq 0 ]]; then
    echo "MCP conformance ($RUNNER): ${#APPLIED[@]} of ${#APPLIED[@]} applicable server scenarios passed, $left_out left out as not applicable"
else
    failed="$(cat "$tmp/results/failed" 2>/dev/null || true)"; failed="${failed# }"
    echo "MCP conformance ($RUNNER): FAILED (exit $rc): ${failed:-the runner did not finish}" >&2
    exit 1
fi
