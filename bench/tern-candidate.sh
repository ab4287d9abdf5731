#!/usr/bin/env bash
# Candidate command for ../shared/bench/proxy-bench.sh: a one-listener Tern config forwarding every
# request to $BACKEND_ADDR, listening on $CANDIDATE_PORT. Usage: tern-candidate.sh PATH_TO_TERN
set -euo pipefail
bin=${1:?path to the tern binary}
dir=$(mktemp -d)
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(dirname "$0")/tern-config.sh" "$CANDIDATE_PORT" "$admin" "$BACKEND_ADDR" > "$dir/tern.yaml"
exec "$bin" --config "$dir" --log-level warn
