#!/usr/bin/python3
"""Write an example config with every key, its default and a "# key" comment
beside it, from a daemon's own --help-config and --print-config:

    deploy/gen-example-config.py build/bin/bimip-server > deploy/config/server.example.json

Members named "#..." are comments to the config loader (bm_config.h).
"""
import json
import re
import subprocess
import sys

prog = sys.argv[1]
helptext = subprocess.run([prog, "--help-config"], check=True, capture_output=True,
                          text=True).stdout
conf = json.loads(subprocess.run([prog, "--print-config"], check=True,
                                 capture_output=True, text=True).stdout)
notes = {}
lines = helptext.splitlines()
for i, line in enumerate(lines):
    m = re.match(r"^(\S+)\s+\((.*)\)$", line)
    if m:
        desc = []
        j = i + 1
        while j < len(lines) and lines[j].startswith(" "):
            desc.append(lines[j].strip())
            j += 1
        notes[m.group(1)] = f"{' '.join(desc)} [{m.group(2)}]"


def annotate(obj, prefix=""):
    out = {}
    for k, v in obj.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out[k] = annotate(v, path)
        else:
            if path in notes:
                out[f"# {k}"] = notes[path]
            # secrets print as "(redacted)": an example leaves them empty
            out[k] = "" if v == "(redacted)" else v
    return out


json.dump(annotate(conf), sys.stdout, indent=2)
sys.stdout.write("\n")
