#!/usr/bin/env python3
"""Writes expect.json for fixtures from the binary's current output. Review the diff before committing!

Usage (from the repository root, after `cargo build -p tern-validate`):
    python3 validate/docs-gen/bless-fixture.py FIXTURE_NAME...
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[2]
fixtures = root / "validate/tests/fixtures"
binary = root / "target/debug/tern-validate"

for name in sys.argv[1:]:
    out = subprocess.run([binary, "--format", "json", name], cwd=fixtures, capture_output=True, text=True)
    doc = json.loads(out.stdout)

    def rel(p):
        assert p.startswith(name), p
        return p[len(name):].lstrip("/")

    expect = {"exit": out.returncode, "diagnostics": []}
    for d in doc["diagnostics"]:
        e = {k: d[k] for k in ("severity", "code")}
        e.update(file=rel(d["file"]), line=d["line"], column=d["column"])
        if d["help"]:
            e["help"] = d["help"]
        if d["related"]:
            e["related"] = [{"file": rel(r["file"]), "line": r["line"], "column": r["column"]} for r in d["related"]]
        expect["diagnostics"].append(e)
    (fixtures / name / "expect.json").write_text(json.dumps(expect, indent=2) + "\n")
    print(f"{name}: exit {out.returncode}, {len(expect['diagnostics'])} diagnostics")
