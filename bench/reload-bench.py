#!/usr/bin/env python3
"""Reload benchmarks for tern (stdlib only; wrk from Debian for the load part).

1. latency: time from a config write to the new route serving, over N changes, for in-place
   writes, write-temp-and-rename, and a directory symlink swap (what tern-sync does).
2. load: wrk at 64 connections through tern to a backend while the config is re-written N times;
   counts failed requests (must be 0).
3. rss: idle resident memory of tern on the quickstart config.

Usage: bench/reload-bench.py [--tern target/release/tern] [--changes 100] [--skip-load]
"""
import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from benchlib import free_port, wait_ready


def config(admin, port, body, cluster_addr=None, variant=0):
    route = (
        f'route: {{ cluster: be, timeout: {1 + variant % 5}s }}'
        if cluster_addr
        else f'direct_response: {{ status: 200, body: "{body}" }}'
    )
    text = f"""admin: {{ address: "127.0.0.1:{admin}" }}
listeners:
  - {{ name: ingress, address: "127.0.0.1:{port}", route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ path: /version }}
            direct_response: {{ status: 200, body: "{body}" }}
          - match: {{ prefix: / }}
            {route}
"""
    if cluster_addr:
        text += f"""clusters:
  - name: be
    endpoints: [{{ address: "{cluster_addr}", weight: {1 + variant % 3} }}]
"""
    return text


def start(tern, path, extra=()):
    return subprocess.Popen([tern, "--config", path, "--log-level", "warn", *extra])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def write_inplace(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_rename(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def latency(tern, changes, mode):
    base = tempfile.mkdtemp()
    admin, port = free_port(), free_port()
    if mode == "symlink":
        os.mkdir(os.path.join(base, "s0"))
        write_inplace(os.path.join(base, "s0", "t.yaml"), config(admin, port, "v0"))
        os.symlink("s0", os.path.join(base, "current"))
        root = os.path.join(base, "current")
    else:
        root = os.path.join(base, "conf")
        os.mkdir(root)
        write_inplace(os.path.join(root, "t.yaml"), config(admin, port, "v0"))
    proc = start(tern, root)
    try:
        wait_ready(admin)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        samples = []
        for i in range(1, changes + 1):
            body = f"v{i}"
            text = config(admin, port, body)
            t0 = time.perf_counter()
            if mode == "inplace":
                write_inplace(os.path.join(root, "t.yaml"), text)
            elif mode == "rename":
                write_rename(os.path.join(root, "t.yaml"), text)
            else:
                d = os.path.join(base, f"s{i}")
                os.mkdir(d)
                write_inplace(os.path.join(d, "t.yaml"), text)
                os.symlink(f"s{i}", os.path.join(base, ".current.tmp"))
                os.rename(os.path.join(base, ".current.tmp"), os.path.join(base, "current"))
            while True:
                conn.request("GET", "/version")
                got = conn.getresponse().read().decode()
                if got == body:
                    break
                if time.perf_counter() - t0 > 10:
                    sys.exit(f"change {i} not served after 10 s")
            samples.append((time.perf_counter() - t0) * 1000)
        print(
            f"reload latency [{mode}] over {changes} changes: p50 {pct(samples, 50):.1f} ms, "
            f"p95 {pct(samples, 95):.1f} ms, p99 {pct(samples, 99):.1f} ms, max {max(samples):.1f} ms"
        )
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)


def load(tern, changes, seconds):
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    base = tempfile.mkdtemp()
    # The backend is a second tern answering with a direct response.
    b_admin, b_port = free_port(), free_port()
    os.mkdir(os.path.join(base, "backend"))
    write_inplace(os.path.join(base, "backend", "b.yaml"), config(b_admin, b_port, "backend"))
    admin, port = free_port(), free_port()
    os.mkdir(os.path.join(base, "proxy"))
    path = os.path.join(base, "proxy", "p.yaml")
    write_inplace(path, config(admin, port, "v0", f"127.0.0.1:{b_port}"))
    backend = start(tern, os.path.join(base, "backend"))
    proxy = start(tern, os.path.join(base, "proxy"))
    try:
        wait_ready(b_admin)
        wait_ready(admin)
        wrk = subprocess.Popen(
            ["wrk", "-t", "1", "-c", "64", "-d", f"{seconds}s", f"http://127.0.0.1:{port}/x"],
            stdout=subprocess.PIPE,
            text=True,
        )
        interval = (seconds - 2) / changes
        time.sleep(1)
        for i in range(1, changes + 1):
            # Alternate the route timeout and the endpoint weight: new route tables and a changed cluster.
            write_rename(path, config(admin, port, f"v{i}", f"127.0.0.1:{b_port}", variant=i))
            time.sleep(interval)
        out, _ = wrk.communicate()
        c = http.client.HTTPConnection("127.0.0.1", admin)
        c.request("GET", "/stats?format=json")
        import json

        stats = json.loads(c.getresponse().read())
        reqs = re.search(r"(\d+) requests in", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        err_total = sum(int(x) for x in errs.groups()) if errs else 0
        print(
            f"reload under load: {reqs.group(1) if reqs else '?'} requests in {seconds} s at 64 connections, "
            f"{stats.get('server.config_update_success', 0) - 1} reloads applied, "
            f"non-2xx {non2xx.group(1) if non2xx else 0}, socket errors {err_total}"
        )
    finally:
        for p in (proxy, backend):
            p.terminate()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)


def rss(tern):
    admin = 9901
    proc = start(tern, "config-examples/quickstart")
    try:
        wait_ready(admin)
        # Serve a few requests first so lazily allocated state is counted.
        for _ in range(100):
            c = http.client.HTTPConnection("127.0.0.1", 10000)
            c.request("GET", "/healthz")
            c.getresponse().read()
        time.sleep(1)
        with open(f"/proc/{proc.pid}/status") as f:
            st = f.read()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
        threads = int(re.search(r"Threads:\s+(\d+)", st).group(1))
        print(f"idle RSS on the quickstart: {rss_kb / 1024:.1f} MiB ({threads} threads)")
    finally:
        proc.terminate()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--skip-load", action="store_true")
    a = ap.parse_args()
    for mode in ("inplace", "rename", "symlink"):
        latency(a.tern, a.changes, mode)
    if not a.skip_load:
        load(a.tern, a.changes, a.seconds)
    rss(a.tern)


if __name__ == "__main__":
    main()
