#!/usr/bin/env python3
"""One of three upstreams fails: client-visible error rate with and without retries + outlier detection.

Backends are tern instances answering with direct responses (two healthy, one answering 503 to
everything, or - with --mode refused - one address where nothing listens). The proxy under test
forwards to all three with round robin. wrk drives 64 connections for --seconds per scenario and
reports non-2xx responses.

Usage: bench/failover.py [--tern target/release/tern] [--seconds 15] [--mode 503|refused]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from benchlib import free_port, wait_ready


def start(tern, yaml_text, base, name):
    d = os.path.join(base, name)
    os.mkdir(d)
    with open(os.path.join(d, "c.yaml"), "w") as f:
        f.write(yaml_text)
    return subprocess.Popen([tern, "--config", d, "--log-level", "error"])


def backend(admin, port, status):
    return f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners: [{{ name: b, address: "127.0.0.1:{port}", route_config: r }}]
route_configs:
  - name: r
    virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: / }}, direct_response: {{ status: {status}, body: "x" }} }}] }}]
"""


def proxy(admin, port, endpoints, resilient):
    eps = ", ".join(f'{{ address: "{e}" }}' for e in endpoints)
    retry = (
        'retry_policy: { retry_on: "5xx", num_retries: 2, retry_back_off: { base_interval: 1ms } }'
        if resilient
        else ""
    )
    outlier = (
        "    outlier_detection: { consecutive_5xx: 5, base_ejection_time: 30s, max_ejection_percent: 50 }\n"
        if resilient
        else ""
    )
    return f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners: [{{ name: p, address: "127.0.0.1:{port}", route_config: r }}]
route_configs:
  - name: r
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: c, {retry} }}
clusters:
  - name: c
    connect_timeout: 250ms
    circuit_breakers: {{ max_retries: 1024 }}
    endpoints: [{eps}]
{outlier}"""


def run(tern, seconds, mode, resilient):
    base = tempfile.mkdtemp()
    procs = []
    try:
        endpoints = []
        for i, status in enumerate([200, 200, 503]):
            port = free_port()
            if status == 503 and mode == "refused":
                endpoints.append(f"127.0.0.1:{port}")  # nothing listens here
                continue
            admin = free_port()
            procs.append(start(tern, backend(admin, port, status), base, f"b{i}"))
            wait_ready(admin)
            endpoints.append(f"127.0.0.1:{port}")
        admin, port = free_port(), free_port()
        procs.append(start(tern, proxy(admin, port, endpoints, resilient), base, "proxy"))
        wait_ready(admin)
        out = subprocess.run(
            ["wrk", "-t", "1", "-c", "64", "-d", f"{seconds}s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
        ).stdout
        total = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        sock = sum(int(x) for x in errs.groups()) if errs else 0
        label = "retries + outlier detection" if resilient else "no retries, no outlier detection"
        print(
            f"[{mode}] {label}: {total} requests, {non2xx} non-2xx, {sock} socket errors, "
            f"client-visible error rate {100.0 * (non2xx + sock) / max(total, 1):.3f} %"
        )
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--mode", choices=["503", "refused", "both"], default="both")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    modes = ["503", "refused"] if a.mode == "both" else [a.mode]
    for mode in modes:
        for resilient in (False, True):
            run(a.tern, a.seconds, mode, resilient)


if __name__ == "__main__":
    main()
