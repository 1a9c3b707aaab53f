#!/usr/bin/env python3
"""Add an "Ir/request" column to callgrind_annotate output and keep the top entries.

usage: callgrind_annotate ... | per_request.py REQUESTS [TOP]

REQUESTS is how many requests the annotated dump covers; TOP (default 40) is how many function
lines to keep after each header. Lines that do not start with a count pass through unchanged.
"""
import re
import signal
import sys

COUNT = re.compile(r"^\s*([0-9][0-9,]*)\s")
# Long path prefixes that say nothing: the cargo registry, the Rust sources, our temp dir.
SHORTEN = [
    (re.compile(r"/root/\.cargo/registry/src/[^/]+/|\S*/\.cargo/registry/src/[^/]+/"), ""),
    (re.compile(r"/rustc/[0-9a-f]+/"), "rustc/"),
    (re.compile(r" \[/tmp/gwbench\.[^/]+/([^\]]+)\]"), r" [\1]"),
]


def main() -> None:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` is fine
    requests = int(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    kept = 0
    for line in sys.stdin:
        line = line.rstrip("\n")
        m = COUNT.match(line)
        if not m:
            if line.startswith("-----"):
                kept = 0
            print(line)
            continue
        kept += 1
        if "PROGRAM TOTALS" not in line and kept > top:
            continue
        per = int(m.group(1).replace(",", "")) / requests
        text = line.strip()
        for pattern, repl in SHORTEN:
            text = pattern.sub(repl, text)
        print(f"{per:12,.0f}/req  {text}")


if __name__ == "__main__":
    main()
