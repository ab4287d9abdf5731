"""Helpers the bench scripts share: ports, readiness, memory readings. Standard library only,
imported by the scripts next to it (`python3 bench/NAME.py` puts bench/ on the module path)."""

import http.client
import random
import socket
import sys
import time


def free_port(ips=("127.0.0.1",)):
    """A port the kernel just gave out, free on every address in `ips`."""
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        try:
            for ip in ips:
                t = socket.socket()
                t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                t.bind((ip, p))
                t.close()
            return p
        except OSError:
            continue


def free_fixed_port(taken):
    """A free port below the ephemeral range (20000-32000), not in `taken` (then added to it):
    for runs that open thousands of client connections, whose own ports would otherwise take
    the proxies' listening ports between choosing and binding them."""
    while True:
        p = random.randint(20000, 32000)
        if p in taken:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        taken.add(p)
        return p


def wait_ready(admin, deadline=20):
    """Waits until Tern's admin endpoint on `admin` answers /ready with 200; exits if it never does."""
    end = time.time() + deadline
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
            c.request("GET", "/ready")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    sys.exit("tern did not become ready")


def rss_kib(pid):
    """The resident set of `pid` in KiB (VmRSS), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0
