#!/usr/bin/env python
"""Training throughput: float32 (contiguous) vs channels_last + bf16 autocast, in one run.

Prints images/s for each mode and their ratio. With --accuracy, also trains
both modes for a few epochs on a CIFAR-10 subset and prints the validation
accuracy of each, to check that bf16 does not cost accuracy. With --compile,
a third arm: channels_last + bf16 with the net under torch.compile (inductor;
compile time excluded, reported apart). With --teachers N..., channels_last + bf16 steps taught by N
consistent teachers each (`train --consistent-teacher`), as ratios to the untaught step. With --widths W...,
channels_last + bf16 steps of the net at W times its hidden channels (`train --width`), as ratios likewise. With
--sam, sharpness-aware steps (`train --sam`: a second forward and backward pass), alone and with each --teachers N,
as ratios to the same step without it.

    python tools/bench_train.py [--batch-size 128] [--steps 20] [--accuracy] [--compile] [--teachers 1 5] [--widths 2]
    python tools/bench_train.py --teachers 5 --sam --steps 10        # the cost of row cifar10-48-e200-ckd5-sam
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hashindex.devices import autocast_for
from hashindex.distill import ConsistentTeacher, distill_loss
from hashindex.model import NINHash
from hashindex.recipe import sharpness_aware

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg"


def step_throughput(bf16_channels_last: bool, batch_size: int, steps: int, warmup: int = 3,
                    compile_net: bool = False, timings: dict | None = None, device: str = "cpu",
                    teachers: int = 0, width: int = 1, sam: float = 0.0) -> float:
    """Images/s of forward + backward + SGD step on random 32x32 uint8 batches (on ``device``; a GPU is
    waited for before the clock is read); with ``teachers``, as many nets teach each batch as
    `train --consistent-teacher` has them (`distill.ConsistentTeacher`, the distillation loss added); ``width``:
    the net's (`train --width`); ``sam``: sharpness-aware steps at that radius (`recipe.sharpness_aware`)."""
    torch.manual_seed(0)
    device = torch.device(device)
    net = NINHash(48, 10, width=width).train().to(device)
    if bf16_channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_net:
        net = torch.compile(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (batch_size,)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    teach = ConsistentTeacher([NINHash(48, 10).to(memory_format=torch.channels_last) for _ in range(teachers)],
                              device, bf16_channels_last) if teachers else None

    def one_step():
        soft = teach(x) if teach is not None else None

        def step_loss():
            with autocast_for(device, bf16_channels_last):
                logits, _, _ = net(x)
            loss = F.cross_entropy(logits.float(), y)
            return loss + distill_loss(logits.float(), soft, 4.0) if soft is not None else loss

        opt.zero_grad()
        step_loss().backward()
        if sam:
            sharpness_aware(net, sam, step_loss)
        opt.step()

    t0 = time.perf_counter()
    for _ in range(warmup):
        one_step()
    sync()
    if timings is not None:
        timings["warmup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync()
    return steps * batch_size / (time.perf_counter() - t0)


def accuracy_check(epochs: int, limit: int) -> dict[str, float]:
    """Validation accuracy after a short run in each mode (same seed, same data)."""
    from hashindex.training import TrainConfig, train

    out = {}
    for bf16 in (False, True):
        with tempfile.TemporaryDirectory() as d:
            cfg = TrainConfig(data=str(DATA / "train.tar"), val=str(DATA / "test.tar"), out=f"{d}/m.pt",
                              epochs=epochs, limit=limit, val_limit=2000, bf16=bf16)
            out["bf16" if bf16 else "fp32"] = train(cfg, progress=False, log=lambda s: None)["accuracy"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--accuracy", action="store_true", help="also compare short-run accuracy")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--compile", action="store_true", help="also time the net under torch.compile")
    ap.add_argument("--teachers", type=int, nargs="*", default=[],
                    help="also time channels_last + bf16 steps taught by this many consistent teachers (e.g. 1 5)")
    ap.add_argument("--widths", type=int, nargs="*", default=[],
                    help="also time channels_last + bf16 steps of the net at these widths (e.g. 2 3)")
    ap.add_argument("--sam", action="store_true", help="also time sharpness-aware steps (rho 0.05), alone and with "
                                                       "each --teachers N")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {"threads": torch.get_num_threads(), "batch_size": args.batch_size,
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    res["fp32_img_s"] = step_throughput(False, args.batch_size, args.steps)
    res["bf16_cl_img_s"] = step_throughput(True, args.batch_size, args.steps)
    res["ratio"] = res["bf16_cl_img_s"] / res["fp32_img_s"]
    if args.compile:
        timings: dict = {}
        res["compiled_img_s"] = step_throughput(True, args.batch_size, args.steps, compile_net=True, timings=timings)
        res["compile_warmup_s"] = timings["warmup_s"]
        res["ratio_compiled"] = res["compiled_img_s"] / res["bf16_cl_img_s"]
    for n in args.teachers:
        res[f"teachers_{n}_img_s"] = step_throughput(True, args.batch_size, args.steps, teachers=n)
        res[f"ratio_teachers_{n}"] = res[f"teachers_{n}_img_s"] / res["bf16_cl_img_s"]
    for w in args.widths:
        res[f"width_{w}_img_s"] = step_throughput(True, args.batch_size, args.steps, width=w)
        res[f"ratio_width_{w}"] = res[f"width_{w}_img_s"] / res["bf16_cl_img_s"]
    if args.sam:
        for n in [0, *args.teachers]:
            key = f"teachers_{n}_img_s" if n else "bf16_cl_img_s"
            res[f"sam_teachers_{n}_img_s"] = step_throughput(True, args.batch_size, args.steps, teachers=n, sam=0.05)
            res[f"ratio_sam_teachers_{n}"] = res[f"sam_teachers_{n}_img_s"] / res[key]
    if args.accuracy:
        res["val_acc"] = accuracy_check(args.epochs, args.limit)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"threads {res['threads']}, batch {args.batch_size}, {res['cpu_capability']}")
    print(f"fp32 contiguous          : {res['fp32_img_s']:8.1f} img/s")
    print(f"channels_last + bf16     : {res['bf16_cl_img_s']:8.1f} img/s")
    print(f"ratio bf16/fp32          : {res['ratio']:8.2f}x")
    if args.compile:
        print(f"+ torch.compile          : {res['compiled_img_s']:8.1f} img/s "
              f"({res['ratio_compiled']:.2f}x channels_last + bf16; warm-up with compiling {res['compile_warmup_s']:.0f} s)")
    for n in args.teachers:
        print(f"+ {n} consistent teacher(s) : {res[f'teachers_{n}_img_s']:8.1f} img/s "
              f"({res[f'ratio_teachers_{n}']:.2f}x channels_last + bf16)")
    for w in args.widths:
        print(f"+ width {w}                : {res[f'width_{w}_img_s']:8.1f} img/s "
              f"({res[f'ratio_width_{w}']:.2f}x channels_last + bf16)")
    for n in [0, *args.teachers] if args.sam else []:
        print(f"+ SAM, {n} teacher(s)      : {res[f'sam_teachers_{n}_img_s']:8.1f} img/s "
              f"({res[f'ratio_sam_teachers_{n}']:.2f}x the same step without SAM)")
    if args.accuracy:
        print(f"val acc after {args.epochs} epochs on {args.limit} images: {res['val_acc']}")


if __name__ == "__main__":
    main()
