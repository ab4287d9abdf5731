#!/usr/bin/env python3
"""Generates the configurations that used to make tern-validate (and the proxy's loader) quadratic.

Usage: python3 bench/validate-hostile-gen.py OUT_DIR   (used by `bench/validate-bench.sh hostile`)
"""
import os
import sys

d = sys.argv[1]
long_prefix = "/" + "a" * 300000

# 40,000 clusters with a bad value each: every error recovered and reported with a snippet.
os.makedirs(f"{d}/bad-clusters")
with open(f"{d}/bad-clusters/c.yaml", "w") as f:
    f.write("clusters:\n")
    for i in range(40000):
        f.write(f"  - name: c{i}\n    connect_timeout: soon\n    endpoints: [{{ address: 10.0.0.1:80 }}]\n")

# The same in flow style on one line: 40,000 problems on one 1.5 MB line.
os.makedirs(f"{d}/bad-flow")
with open(f"{d}/bad-flow/c.yaml", "w") as f:
    items = ", ".join(f"{{ name: c{i}, connect_timeout: soon }}" for i in range(40000))
    f.write(f"clusters: [{items}]\n")

# A 300 KB route prefix, and a second route under it (W002).
os.makedirs(f"{d}/long-prefix")
with open(f"{d}/long-prefix/r.yaml", "w") as f:
    f.write("clusters: [{ name: c, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
    f.write("route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n")
    f.write("        domains: [\"*\"]\n        routes:\n")
    f.write(f"          - {{ match: {{ prefix: {long_prefix} }}, route: {{ cluster: c }} }}\n")
    f.write(f"          - {{ match: {{ prefix: {long_prefix}b }}, route: {{ cluster: c }} }}\n")

# 20,000 routes with a header matcher each, and 10,000 listeners on one port.
os.makedirs(f"{d}/matchers")
with open(f"{d}/matchers/r.yaml", "w") as f:
    f.write("clusters: [{ name: c, endpoints: [{ address: 127.0.0.1:1 }] }]\n")
    f.write("route_configs:\n  - name: m\n    virtual_hosts:\n      - name: v\n")
    f.write("        domains: [\"*\"]\n        routes:\n")
    for i in range(20000):
        f.write(f"          - {{ match: {{ prefix: /, headers: [{{ name: x-tenant, exact: \"{i}\" }}] }}, "
                "route: { cluster: c } }\n")
    f.write("listeners:\n")
    for i in range(10000):
        f.write(f"  - {{ name: l{i}, address: 127.{i // 250}.{i % 250}.1:80, route_config: m }}\n")
