#!/usr/bin/env bash
# Candidate command for ../shared/bench/proxy-bench.sh: a one-listener Tern config forwarding every
# request to $BACKEND_ADDR, listening on $CANDIDATE_PORT. Usage: tern-candidate.sh PATH_TO_TERN
set -euo pipefail
bin=${1:?path to the tern binary}
dir=$(mktemp -d)
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$dir/tern.yaml" <<YAML
admin: { address: "127.0.0.1:$admin" }
listeners:
  - { name: bench, address: "127.0.0.1:$CANDIDATE_PORT", route_config: main }
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { prefix: / }
            route: { cluster: backend }
clusters:
  - name: backend
    endpoints: [{ address: "$BACKEND_ADDR" }]
YAML
exec "$bin" --config "$dir" --log-level warn
