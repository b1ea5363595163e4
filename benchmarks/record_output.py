"""Runs a benchmark that only prints its figures and records its output as JSON, with the machine.

    python benchmarks/record_output.py bench_jacobians.py [ARGS...]

The benchmark's output is passed through as it comes (so its progress shows), and written with
the command, common.machine() and common.provenance() (the commit and the script's hash) to
benchmarks/results/<script name>.json, which docs/benchmarks.md can quote (see NOTE: [Docs as
tests] in test/test_docs.py). The "threads" field is left out: the benchmark sets its own thread
count and prints it.
"""
import json
import os
import subprocess
import sys
import time

from common import RESULTS, machine, progress, provenance


def main():
    if len(sys.argv) < 2:
        # `make bench` runs every script here without arguments: not an error
        progress(__doc__.strip())
        return
    script, args = sys.argv[1], sys.argv[2:]
    here = os.path.dirname(os.path.abspath(__file__))
    command = [sys.executable, "-u", os.path.join(here, script), *args]
    progress(f"recording: python {script} {' '.join(args)}".rstrip())
    start = time.time()
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=here) as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    if proc.returncode != 0:
        sys.exit(f"{script} exited with {proc.returncode}; nothing recorded")
    info = machine()
    del info["threads"]
    name = os.path.splitext(os.path.basename(script))[0]
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump({
            "machine": info,
            "provenance": provenance(os.path.join(here, script)),
            "command": " ".join(["python", script, *args]),
            "seconds": round(time.time() - start, 1),
            "output": "".join(lines),
        }, f, indent=2)
    progress(f"wrote {path}")


if __name__ == "__main__":
    main()
