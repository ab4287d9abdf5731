#!/usr/bin/env bash
# The one-route bench config: a listener forwarding everything to one backend.
# Usage: tern-config.sh LISTEN_PORT ADMIN_PORT BACKEND_ADDR > tern.yaml
set -euo pipefail
cat <<YAML
admin: { address: "127.0.0.1:$2" }
listeners:
  - { name: bench, address: "127.0.0.1:$1", route_config: main }
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
    endpoints: [{ address: "$3" }]
YAML
