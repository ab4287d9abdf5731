#!/usr/bin/env python3
"""Time from a DNS change to the new task taking traffic, for a strict_dns cluster.

A small DNS responder (A records only) on a loopback UDP port plays the VPC resolver with a Cloud
Map name; two HTTP backends on 127.0.0.1 and 127.0.0.2 (one port) play two tasks. Each round
points the name at the other task and sends requests (one every 5 ms) until one is answered by it.
The target is at most dns_refresh_rate + 1 s (the change lands at a random point of the refresh
interval, so the median is about half of it).

Usage: bench/dns-propagation.py [--bin PATH] [--rounds 10] [--refresh 5s] [--ttl 60]
Without --bin, builds the release binary (as bench/profile.sh does).
"""
import argparse
import http.client
import http.server
import os
import random
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from benchlib import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "svc.bench"


class Zone:
    def __init__(self, ttl):
        self.ttl = ttl
        self.records = {}
        self.lock = threading.Lock()

    def set(self, name, ips):
        with self.lock:
            self.records[name] = list(ips)

    def answer(self, data):
        if len(data) < 17:
            return None
        i, labels = 12, []
        while i < len(data) and data[i] != 0:
            n = data[i]
            labels.append(data[i + 1:i + 1 + n].decode(errors="replace"))
            i += 1 + n
        end = i + 5
        if end > len(data):
            return None
        qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
        name = ".".join(labels).lower().rstrip(".")
        with self.lock:
            ips = self.records.get(name)
        rcode = 3 if ips is None else 0
        answers = ips if (ips and qtype == 1) else []
        rd = data[2] & 0x01
        header = data[:2] + struct.pack(">BBHHHH", 0x80 | rd, 0x80 | rcode, 1, len(answers), 0, 0)
        body = b"".join(
            b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, self.ttl, 4) + socket.inet_aton(ip)
            for ip in answers
        )
        return header + data[12:end] + body


def serve_dns(zone):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def loop():
        while True:
            data, peer = sock.recvfrom(4096)
            reply = zone.answer(data)
            if reply:
                sock.sendto(reply, peer)

    threading.Thread(target=loop, daemon=True).start()
    return sock.getsockname()[1]


def backend(ip, port, name):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = name.encode()
            self.send_response(200)
            self.send_header("x-backend", name)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    s = S((ip, port), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    return s


def who(port):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        c.close()
        return r.getheader("x-backend") or f"status:{r.status}"
    except OSError as e:
        return f"error:{e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--refresh", default="5s")
    ap.add_argument("--ttl", type=int, default=60)
    args = ap.parse_args()
    binary = args.bin
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--bin", "tern"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target/release/tern")

    zone = Zone(args.ttl)
    dns_port = serve_dns(zone)
    bport = free_port(("127.0.0.1", "127.0.0.2"))
    backends = [backend("127.0.0.1", bport, "a"), backend("127.0.0.2", bport, "b")]
    zone.set(NAME, ["127.0.0.1"])
    lport, aport = free_port(), free_port()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "tern.yaml"), "w") as f:
        f.write(f"""admin: {{ address: 127.0.0.1:{aport} }}
dns: {{ resolvers: ["127.0.0.1:{dns_port}"] }}
listeners:
  - {{ name: ingress, address: 127.0.0.1:{lport}, route_config: main }}
route_configs:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: {{ prefix: / }}
            route: {{ cluster: svc }}
clusters:
  - name: svc
    type: strict_dns
    dns_refresh_rate: {args.refresh}
    endpoints: [{{ address: "{NAME}:{bport}" }}]
""")
    proc = subprocess.Popen([binary, "--config", tmp, "--log-level", "warn"])
    try:
        deadline = time.time() + 30
        while who(lport) != "a":
            if time.time() > deadline:
                sys.exit("tern did not start serving")
            time.sleep(0.05)
        times = []
        current = "a"
        refresh_s = float(args.refresh[:-2]) / 1000 if args.refresh.endswith("ms") else float(args.refresh.rstrip("s"))
        for r in range(args.rounds):
            nxt = "b" if current == "a" else "a"
            # Let the change land at a random point of the refresh interval.
            time.sleep(random.uniform(0, refresh_s))
            zone.set(NAME, ["127.0.0.2" if nxt == "b" else "127.0.0.1"])
            t0 = time.monotonic()
            while who(lport) != nxt:
                if time.monotonic() - t0 > 120:
                    sys.exit(f"round {r}: {nxt} never took traffic")
                time.sleep(0.005)
            times.append(time.monotonic() - t0)
            current = nxt
        refresh = args.refresh
        print(f"DNS change to the new task taking traffic, {args.rounds} rounds "
              f"(dns_refresh_rate {refresh}, TTL {args.ttl}s):")
        print(f"  median {statistics.median(times):.2f} s, max {max(times):.2f} s, "
              f"min {min(times):.2f} s")
    finally:
        proc.terminate()
        proc.wait()
        for b in backends:
            b.shutdown()


if __name__ == "__main__":
    main()
