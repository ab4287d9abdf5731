#!/usr/bin/env python3
"""Generates a large split Tern configuration for benchmarking tern-validate.

Usage: python3 bench/validate-gen.py OUT_DIR [FILES] [ROUTES_PER_FILE] [one-file]

Defaults: 1,000 files, 10 routes each (10,000 routes), one cluster per file (1,000 clusters),
and one listener in each of the first 100 files. Every file holds a cluster and a route config
whose routes reference clusters defined in other files, so merging and cross-file reference checks
do real work. The result is valid (tern-validate exits 0).

With `one-file`, the same content goes into a single file (`all.yaml`): what the per-file YAML
node budget (`--max-yaml-nodes`) must hold, e.g. 1,000 x 100 = 100,000 routes in one file.
"""
import os
import sys

out = sys.argv[1]
files = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
per_file = int(sys.argv[3]) if len(sys.argv) > 3 else 10
one_file = len(sys.argv) > 4 and sys.argv[4] == "one-file"
os.makedirs(out, exist_ok=True)
merged = {"listeners": [], "clusters": [], "route_configs": []}

for i in range(files):
    team = f"team-{i % 20:02d}"
    if not one_file:
        os.makedirs(os.path.join(out, team), exist_ok=True)
    nxt = (i + 1) % files
    lines = []
    if i < 100:
        lines += [
            "listeners:",
            f"  - name: listener-{i:04d}",
            f"    address: 0.0.0.0:{10000 + i}",
            f"    route_config: rc-{i:04d}",
        ]
    lines += [
        "clusters:",
        f"  - name: svc-{i:04d}",
        "    connect_timeout: 250ms",
        "    lb_policy: least_request",
        "    endpoints:",
        f"      - address: 10.{i // 250}.{i % 250}.1:8080",
        "        weight: 2",
        f"      - address: svc-{i:04d}.internal:8080",
        "route_configs:",
        f"  - name: rc-{i:04d}",
        "    virtual_hosts:",
        f"      - name: svc-{i:04d}",
        f'        domains: ["svc-{i:04d}.example.com", "*.svc-{i:04d}.example.com"]',
        "        routes:",
    ]
    for r in range(per_file):
        kind = r % 5
        if kind == 0:
            lines += [
                f"          - name: r{r}",
                "            match:",
                f"              prefix: /v{r}/canary/",
                "              headers: [{ name: x-canary, exact: \"1\" }]",
                f"            route: {{ cluster: svc-{nxt:04d}, timeout: 2s }}",
            ]
        elif kind == 1:
            lines += [
                f"          - match: {{ prefix: /v{r}/api/ }}",
                f"            route: {{ cluster: svc-{i:04d}, prefix_rewrite: /, timeout: 3s }}",
            ]
        elif kind == 2:
            lines += [
                f"          - match: {{ regex: \"/v{r}/items/[0-9]+\" }}",
                f"            route: {{ cluster: svc-{i:04d}, host_rewrite: svc-{i:04d}.internal }}",
            ]
        elif kind == 3:
            lines += [
                f"          - match: {{ path: /v{r}/health }}",
                "            direct_response: { status: 200, body: \"ok\\n\" }",
            ]
        else:
            lines += [
                f"          - match: {{ prefix: /v{r}/old/ }}",
                f"            redirect: {{ prefix_rewrite: /v{r}/api/, response_code: 308 }}",
            ]
    if one_file:
        # Split the file's lines back into its three top-level lists.
        key = None
        for line in lines:
            if line.endswith(":") and not line.startswith(" "):
                key = line[:-1]
            else:
                merged[key].append(line)
        continue
    with open(os.path.join(out, team, f"svc-{i:04d}.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")

if one_file:
    with open(os.path.join(out, "all.yaml"), "w") as f:
        for key, body in merged.items():
            f.write(key + ":\n" + "\n".join(body) + "\n")
