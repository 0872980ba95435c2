#!/usr/bin/env python
"""Training rows on a lent GPU, as one prepared script that fits a lease (issue #13; #18's GPU check first).

A lease is ~15 minutes of device time in all, one call of at most 10 minutes. In that call this script:

  1. runs tools/gpu_check.py (train a few epochs on CUDA, extract on CUDA and on the CPU, compare the codes);
  2. decodes the training set once (`hashindex prepare`) and derives the teachers (`hashindex derive`);
  3. trains the fine-tuning rows (fixed epochs), then the main rows (--rows) all at once for the same number
     of epochs: --epochs, or the most that end before --deadline-s, set by a 3-epoch probe of the same rows
     run at once (capped by --max-epochs);
  4. stops whatever is still running at the deadline (each row is checkpointed every epoch and resumable with
     `hashindex train --resume`) and copies the checkpoints, one log and one JSON summary into --out.

Measured on the H200 (2026-12-04, docs/RESULTS.md "The GPU path"): one row alone trains at ~20,000 images/s
(2.5 s an epoch of CIFAR-10; TrivialAugment: ~16,500 since commit 15ea9a2), and four at once at 4,500-11,000
each, ~25,000 together: so rows at once buy little throughput, and a 200-epoch row needs 8.5-10 minutes of
calls by itself (`tools/gpu_rows.sh ROW` trains one row of tools/reproduce_table.sh and resumes it).
Everything a row is trained with is in ROWS below and in its checkpoint (`hashindex info`); the accuracy and mAP
figures are measured afterwards on the CPU with tools/reproduce_table.sh's protocol (docs/RESULTS.md).

Prepared here (a call carries at most 64 MiB: the tracked tree was 42 MB then, 34 MB since):

    mkdir -p .gpudata                                # .gitignore keeps it out of git
    python tools/gpu_train.py --pack .gpudata        # train.tar.gz (16 MB), test.tar.gz (3.3 MB): both tars gzipped
                                                     # (and whether the tree and they fit one call: carry_report)

then, with the device tool (the lease of 2026-12-04): run(carry=[".gpudata"], timeout_s=540, command=
    "PYTHONUNBUFFERED=1 python3 tools/gpu_train.py --data .gpudata --out $OUT --deadline-s 480")
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TEACHER = "teacher-v2-ten.pt"  # nin-cifar10-48-v2 (cifar10-48-e100's weights) with 10 test views, as the e200-kd row
TEACHER_E200 = "teacher-e200-ten.pt"  # cifar10-48-e200-kd with 10 test views (accuracy 0.9043)
KD = {"teacher": TEACHER}
FULL = 50_000  # CIFAR-10's training images
# name -> train options (hashindex.train keywords) beyond the born-again recipe of cifar10-48-e200-kd:
# 48 bits, batch 128, lr 0.1 cosine, weight decay 5e-4, crop 4 + flip, dropout 0.3, distill weight 0.5 at T = 4
ROWS = {
    "gpu-kd": {**KD},  # the baseline of this lease: cifar10-48-e200-kd's recipe at the lease's epochs
    "gpu-kd-ta": {**KD, "trivial_augment": True},
    "gpu-kd-ta-cutout": {**KD, "trivial_augment": True, "cutout": 16},
    "gpu-kd-ta-ens": {"teacher": (TEACHER, TEACHER_E200), "trivial_augment": True},
}
# fixed-epoch rows of #13 item 4 (tools/reproduce_table.sh cifar10-24/32-init-kd): 10 epochs from the born-again
# student's weights at lr 0.02
INIT = "checkpoints/cifar10-48-e100-kd-scratch.pt"
FINETUNES = {f"cifar10-{b}-init-kd": {"bits": b, "init": INIT, "epochs": 10, "lr": 0.02} for b in (24, 32)}


def pack(folder: Path, train: str, test: str, reads: set[str] | None = None) -> None:
    """The training and test tars gzipped into ``folder`` as train.tar.gz and test.tar.gz, the one packing
    this script and tools/gpu_rows.sh read (77 -> 16 MB and 15 -> 3.3 MB: a tar of 32-px JPEGs is mostly
    headers and padding, which compress away)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "val.tar.gz").unlink(missing_ok=True)  # the test tar's name before 2026-12-04: carried for nothing
    for name, tar in (("train", train), ("test", test)):
        part = folder / f"{name}.tar.gz.tmp"
        with open(tar, "rb") as src, gzip.open(part, "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
        part.replace(folder / f"{name}.tar.gz")  # a stopped packing leaves no half file under the read name
    for f in sorted(folder.glob("*.tar.gz")):
        print(f"{f}: {f.stat().st_size / 1e6:.1f} MB")
    print(carry_report(folder, reads=reads))


CARRY_LIMIT = 64 * 2**20  # what one call of the device tool carries: the work tree and the carried paths


ROWS_SCRIPT = Path(__file__).with_name("reproduce_table.sh")


def row_reads(rows: list[str], script: Path = ROWS_SCRIPT) -> set[str]:
    """The checkpoint file names the named rows of tools/reproduce_table.sh read (every `*.pt` in a row's
    block: its --init, its teachers) or resume (ROW.pt): what a call training them must carry."""
    text = script.read_text()
    names = set()
    for row in rows:
        m = re.search(rf"^\s+(?:[\w|-]+\|)?{re.escape(row)}(?:\|[\w|-]+)?\)(.*?);;", text, re.M | re.S)
        if not m:
            raise SystemExit(f"--for-rows: no row {row} in {script}")
        names |= set(re.findall(r"[\w.-]+\.pt", m.group(1))) | {f"{row}.pt"}
    return names


def carry_report(folder: Path, repo: Path = Path(__file__).resolve().parents[1], reads: set[str] | None = None
                 ) -> str:
    """One line: whether the work tree (what git tracks or would track, as present on disk) and ``folder``
    fit in one call's 64 MiB, and if not, the largest finished checkpoints (checkpoints/*.pt) to move out of
    the tree for that call (2026-12-04: 47.9 MB of tree with six finished checkpoints and an in-progress one,
    plus 19.3 MB of data: 67.2 MB, 60 KB over). Given the file names the call's rows read (`row_reads`), the
    others, in-progress ones included, and never those."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    files = [repo / os.fsdecode(name) for name in listed if name]
    sizes = {f: f.stat().st_size for f in files if f.is_file()}
    tree, data = sum(sizes.values()), sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    total = tree + data
    head = f"carried: tree {tree / 1e6:.1f} MB + {folder} {data / 1e6:.1f} MB = {total / 1e6:.1f} MB"
    if total <= CARRY_LIMIT:
        return f"{head}, within one call's {CARRY_LIMIT / 1e6:.1f} MB"
    folders = [repo / "checkpoints"] + ([repo / "checkpoints" / "in-progress"] if reads is not None else [])
    movable = [f for f in sizes if f.parent in folders and f.suffix == ".pt" and f.name not in (reads or ())]
    big = sorted(movable, key=sizes.get, reverse=True)[:4]
    which = "the call does not read" if reads is None else "these rows do not read"
    return (f"{head}: over one call's {CARRY_LIMIT / 1e6:.1f} MB by {(total - CARRY_LIMIT) / 1e6:.2f} MB; move "
            f"checkpoints {which} out of the tree for it, e.g. "
            + ", ".join(f"{f.relative_to(repo)} ({sizes[f] / 1e6:.1f} MB)" for f in big)
            + " (git status shows them deleted until they are back: commit nothing meanwhile)")


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                  os.environ.get("PYTHONPATH")]))}


def hx(*args: str) -> list[str]:
    return [sys.executable, "-m", "hashindex", "-q", *args]


def row_command(data: str, val: str, out: Path, options: dict, epochs: int, limit: int | None,
                device: str) -> list[str]:
    """The `python -c` line that trains one row through the Python API (every TrainConfig field reachable)."""
    kw = {"val": val, "bits": 48, "epochs": epochs, "device": device, "workers": 0, **options}
    if limit:
        kw["limit"] = limit
    code = (f"import hashindex; hashindex.train({str(data)!r}, {str(out)!r}, resume={out.exists()!r}, "
            f"progress=False, **{kw!r})")
    return [sys.executable, "-c", code]


def launch(rows: dict, data: str, val: str, work: Path, epochs: int, limit: int | None, device: str,
           log) -> dict[str, subprocess.Popen]:
    env = {**ENV, "OMP_NUM_THREADS": "2", "HASHINDEX_THREADS": "2"}
    procs = {}
    for name, options in rows.items():
        cmd = row_command(data, val, work / f"{name}.pt", options, epochs, limit, device)
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    return procs


def wait_all(procs: dict[str, subprocess.Popen], deadline: float) -> dict[str, int | None]:
    """Exit codes; a row still running at the deadline is stopped (None): its last epoch's checkpoint stays."""
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    return {name: p.returncode for name, p in procs.items()}


def history(path: Path) -> list[dict]:
    """A row's per-epoch history so far (none before its first epoch), read by the checkpoint format's owner."""
    from hashindex.checkpoint import read_checkpoint

    return read_checkpoint(str(path))["history"] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", metavar="FOLDER", help="Only write the carried data into FOLDER, then stop.")
    ap.add_argument("--for-rows", metavar="ROW,ROW", help="With --pack: the rows of tools/reproduce_table.sh the "
                    "call will train (tools/gpu_rows.sh): checkpoints they do not read are the ones to move aside.")
    ap.add_argument("--train-tar", default="../shared/data/cifar10-jpeg/train.tar")
    ap.add_argument("--test-tar", default="../shared/data/cifar10-jpeg/test.tar")
    ap.add_argument("--data", default=".gpudata", help="The folder --pack wrote.")
    ap.add_argument("--out", default="runs/gpu_train")
    ap.add_argument("--work", default="/tmp/gpu_train")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--deadline-s", type=float, default=540, help="Seconds from start to stop every row.")
    ap.add_argument("--max-epochs", type=int, default=400)
    ap.add_argument("--probe-images", type=int, default=12_800)
    ap.add_argument("--limit", type=int, default=None, help="Train every row on this many images (a dry run).")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="Override the fine-tunes' 10 (a dry run).")
    ap.add_argument("--skip-check", action="store_true")
    ap.add_argument("--rows", default=",".join(ROWS), help="Main rows to train, comma-separated (of ROWS).")
    ap.add_argument("--epochs", type=int, default=None, help="Train the main rows this many epochs (no probe).")
    ap.add_argument("--no-finetunes", action="store_true", help="Leave out the fixed-epoch fine-tuning rows.")
    args = ap.parse_args()
    if args.pack:
        reads = row_reads(args.for_rows.split(",")) if args.for_rows else None
        return pack(Path(args.pack), args.train_tar, args.test_tar, reads)
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:  # said before a minute of lease is spent on the set-up
        raise SystemExit(f"--rows: unknown {', '.join(sorted(unknown))} (expected some of {', '.join(ROWS)})")

    t0 = time.time()
    deadline = t0 + args.deadline_s
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    data, val = Path(args.data) / "train.tar.gz", str(Path(args.data) / "test.tar.gz")
    summary: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "rows": {}}
    logf = open(out / "train.log", "a")

    def step(what: str, cmd: list[str], timeout: float) -> None:
        t = time.time()
        logf.write(f"\n== {what}: {' '.join(cmd)}\n")
        logf.flush()
        try:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout, env=ENV).returncode
        except subprocess.TimeoutExpired:
            rc = f"stopped after {timeout} s"
        summary.setdefault("steps", {})[what] = {"rc": rc, "s": round(time.time() - t, 1)}
        print(f"{what}: rc {rc} in {time.time() - t:.0f} s", flush=True)

    if not args.skip_check:
        step("gpu_check", [sys.executable, "tools/gpu_check.py", "--device", args.device, "--train", str(data),
                           "--test", val, "--limit", "10000", "--queries", "2000", "--epochs", "3",
                           "--out", str(work / "gpu_check.json")], 120)
        if (work / "gpu_check.json").exists():
            summary["gpu_check"] = json.loads((work / "gpu_check.json").read_text())
    prep = work / "prep"
    step("prepare", hx("prepare", "--data", str(data), "--out", str(prep), "--workers", "12"), 180)
    step("teacher v2", hx("derive", "nin-cifar10-48-v2", "--test-flip", "--test-shift", "2", "--out",
                          str(work / TEACHER)), 60)
    step("teacher e200", hx("derive", "checkpoints/cifar10-48-e200-kd.pt", "--test-flip", "--test-shift", "2",
                            "--out", str(work / TEACHER_E200)), 60)
    print(f"set up in {time.time() - t0:.0f} s", flush=True)
    paths = {TEACHER: str(work / TEACHER), TEACHER_E200: str(work / TEACHER_E200)}
    rows = {name: resolved(ROWS[name], paths) for name in args.rows.split(",")}
    fine = {} if args.no_finetunes else {name: {**o, "epochs": args.finetune_epochs or o["epochs"]}
                                         for name, o in FINETUNES.items()}
    # the fine-tunes first, alone: run beside the probe they made it read twice the steady time per epoch
    summary["finetune_exit"] = wait_all(launch(fine, str(prep), val, work, 0, args.limit, args.device, logf),
                                        deadline)
    epochs = args.epochs or plan(args, rows, str(prep), val, work, deadline, logf, summary)
    if epochs < 1:
        raise SystemExit("no time left for an epoch")
    codes = wait_all(launch(rows, str(prep), val, work, epochs, args.limit, args.device, logf), deadline)
    for name, rc in {**summary.pop("finetune_exit"), **codes}.items():
        ckpt = work / f"{name}.pt"
        hist = history(ckpt)
        summary["rows"][name] = {"rc": rc, "epochs_done": len(hist), "options": {**ROWS, **FINETUNES}[name],
                                 "val_acc": [h.get("val_acc") for h in hist],
                                 "img_per_s": [round(h["img_per_s"]) for h in hist]}
        if ckpt.exists():
            shutil.copy(ckpt, out / ckpt.name)
    summary["wall_s"] = round(time.time() - t0, 1)
    logf.close()
    (out / "gpu_train.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({n: {k: r[k] for k in ("rc", "epochs_done")} | {"last_val": (r["val_acc"] or [None])[-1]}
                      for n, r in summary["rows"].items()}), flush=True)


def plan(args, rows: dict, prep: str, val: str, work: Path, deadline: float, logf, summary: dict) -> int:
    """Epochs for the main rows: all of them trained at once for 3 short epochs (the GPU shared as it will be);
    the last epoch's time per step, scaled to the whole set, sets the most epochs that end before the deadline."""
    probe_dir = work / "probe"
    probe_dir.mkdir(exist_ok=True)
    t = time.time()
    probe = wait_all(launch(rows, prep, val, probe_dir, 3, args.probe_images, args.device, logf), deadline)
    hists = [history(probe_dir / f"{n}.pt") for n in rows]
    walls = [h[-1]["wall_s"] for h in hists if len(h) == 3]
    if len(walls) < len(rows):
        raise SystemExit(f"the probe failed: {probe} (see train.log)")
    steps = -(-(args.limit or FULL) // 128)
    epoch_s = max(walls) / -(-args.probe_images // 128) * steps + 1.0  # + validation and the checkpoint write
    startup = time.time() - t - sum(r["wall_s"] for r in hists[0])
    left = deadline - time.time() - 2 * startup - 30  # a full set's start (teacher logits of 4x the images), end
    epochs = min(args.max_epochs, int(left / epoch_s))
    summary["plan"] = {"probe_s": round(time.time() - t, 1), "probe_epoch_s": walls, "epoch_s": round(epoch_s, 2),
                       "startup_s": round(startup, 1), "epochs": epochs}
    print(f"plan: {summary['plan']}", flush=True)
    return epochs


def resolved(options: dict, paths: dict[str, str]) -> dict:
    """A row's options with its teachers' names as the paths derived in the work folder."""
    o = dict(options)
    if "teacher" in o:
        o["teacher"] = paths[o["teacher"]] if isinstance(o["teacher"], str) else tuple(paths[t] for t in o["teacher"])
    return o


if __name__ == "__main__":
    main()
