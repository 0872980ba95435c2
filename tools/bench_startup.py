#!/usr/bin/env python
"""How fast commands start: wall time of `hashindex --help`, `--version`, `info` and `query --by-id`, and
whether each imported torch, against `python -c "import torch"` measured in the same run (the floor every
command paid when `import hashindex` imported torch).

    python tools/bench_startup.py --index INDEX_DIR [--repeat 5] [--json]

Each command runs in a fresh process, best of --repeat. torch is reported imported when it is in
sys.modules at exit (checked by running the CLI in-process under `python -c`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHECK = ("import sys; from hashindex.cli import main; sys.argv = ['hashindex'] + sys.argv[1:]\n"
         "try:\n    main()\nexcept SystemExit:\n    pass\n"
         "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))")


def best_wall(argv: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        best = min(best, time.perf_counter() - t0)
    return best


def imports_torch(args: list[str]) -> bool:
    res = subprocess.run([sys.executable, "-c", CHECK, *args], capture_output=True, text=True, check=False)
    return "TORCH=1" in res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", required=True, help="a built INDEX_DIR (for info and query --by-id)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    exe = [sys.executable, "-m", "hashindex"]
    commands = {"--help": ["--help"], "--version": ["--version"], "info INDEX": ["info", args.index],
                "query INDEX --by-id 0": ["query", args.index, "--by-id", "0", "--k", "5"]}
    baseline = best_wall([sys.executable, "-c", "import torch"], args.repeat)
    rows = {name: {"wall_s": best_wall(exe + a, args.repeat), "imports_torch": imports_torch(a)}
            for name, a in commands.items()}
    for row in rows.values():
        row["vs_import_torch"] = row["wall_s"] / baseline
    if args.json:
        print(json.dumps({"import_torch_s": baseline, "commands": rows}, indent=2))
        return
    print(f"baseline: python -c 'import torch' {baseline:.3f} s (best of {args.repeat})")
    for name, row in rows.items():
        print(f"{name:<24} {row['wall_s']:.3f} s  ({row['vs_import_torch']:.2f}x import torch)  "
              f"torch imported: {'yes' if row['imports_torch'] else 'no'}")


if __name__ == "__main__":
    main()
