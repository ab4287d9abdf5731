#!/usr/bin/env python3
"""Regenerates docs/validate.md from validate.md.in, running the real binary for every example.

Usage (from the repository root, after `cargo build -p tern-validate`):
    python3 validate/docs-gen/generate.py [path/to/tern-validate]

`<<run ARGS>>` becomes a console block with the output of `tern-validate ARGS` run in
validate/tests/fixtures; `<<files DIR>>` shows the YAML files of a fixture. The test
`docs_examples_match_the_binary` in validate/tests/cli.rs checks the result stays true.
"""
import os
import pathlib
import re
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parents[2]
fixtures = root / "validate/tests/fixtures"
binary = sys.argv[1] if len(sys.argv) > 1 else str(root / "target/debug/tern-validate")


def run(args):
    env = dict(os.environ, NO_COLOR="1")
    out = subprocess.run([binary, *args.split()], cwd=fixtures, env=env, capture_output=True, text=True)
    return f"```console\n$ tern-validate {args}\n{out.stdout}```"


def files(d):
    parts = []
    for p in sorted((fixtures / d).rglob("*")):
        if p.suffix in (".yaml", ".yml"):
            rel = p.relative_to(fixtures)
            parts.append(f"`{rel}`:\n\n```yaml\n{p.read_text()}```")
    return "\n\n".join(parts) + "\n"


text = (root / "validate/docs-gen/validate.md.in").read_text()
text = re.sub(r"<<run (.*?)>>", lambda m: run(m.group(1)), text)
text = re.sub(r"<<files (.*?)>>", lambda m: files(m.group(1)), text)
(root / "docs/validate.md").write_text(text)
