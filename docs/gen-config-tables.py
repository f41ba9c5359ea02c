#!/usr/bin/python3
"""Regenerate the configuration key tables in docs/operations.md from the
daemons' own --help-config output, so the documentation cannot drift.

    docs/gen-config-tables.py build/bin      # rewrites docs/operations.md

The tables sit between <!-- keys:bimip-server --> and <!-- /keys --> markers
(and the same for bimip-signal).  tests/integration/it_tools.c checks that
every key is documented.
"""
import re
import subprocess
import sys

bindir = sys.argv[1] if len(sys.argv) > 1 else "build/bin"
doc = "docs/operations.md"


def table(prog):
    out = subprocess.run([f"{bindir}/{prog}", "--help-config"], check=True,
                         capture_output=True, text=True).stdout
    rows = ["| key | type | default | bounds | reload | description |",
            "| --- | --- | --- | --- | --- | --- |"]
    lines = out.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\S+)\s+\((.*)\)$", lines[i])
        i += 1
        if not m:
            continue
        key, attrs = m.group(1), m.group(2)
        desc = []
        while i < len(lines) and lines[i].startswith(" "):
            desc.append(lines[i].strip())
            i += 1
        parts = [p.strip() for p in re.split(r",\s*(?![^\[]*\])", attrs)]
        typ = parts[0]
        default = next((p[len("default "):] for p in parts if p.startswith("default ")), "")
        reload = "SIGHUP" if "reloadable" in parts else "restart"
        secret = " (secret: shown as `(redacted)`)" if "secret" in parts else ""
        bounds = ", ".join(p for p in parts[1:] if not p.startswith("default ")
                           and p not in ("reloadable", "secret", "restart to change"))
        rows.append(f"| `{key}` | {typ} | `{default.strip(chr(34))}` | {bounds or '—'} | "
                    f"{reload} | {' '.join(desc)}{secret} |")
    return "\n".join(rows)


text = open(doc).read()
for prog in ("bimip-server", "bimip-signal"):
    start, end = f"<!-- keys:{prog} -->", "<!-- /keys -->"
    a = text.index(start) + len(start)
    b = text.index(end, a)
    text = text[:a] + "\n" + table(prog) + "\n" + text[b:]
open(doc, "w").write(text)
