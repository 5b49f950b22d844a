"""Per-step overhead of RLRS: RelativeLR + multi-group AdamW against plain AdamW + one LambdaLR.

    python benchmarks/overhead.py [--steps 300] [--threads 2]

Both arms train the same ~1M-parameter model (micro-dense shape, byte vocabulary) on the same
random batches. Steps alternate between the arms (A, B, A, B, ...) so that machine noise hits both
alike; the figure is the ratio of median step times, plus the optimizer+scheduler part alone.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import platform
import statistics
import time

import torch

import rlrs
from rlrs.models import build_model, count_params, get_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = dataclasses.replace(get_size("micro-dense"), vocab_size=257)
    model_a = build_model(cfg)
    model_b = copy.deepcopy(model_a)
    plan = rlrs.presets.get("paper-dense")
    total = args.steps + 10

    groups = rlrs.param_groups(model_a, plan)
    opt_a = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    sched_a = rlrs.RelativeLR(opt_a, plan, total)

    opt_b = torch.optim.AdamW(model_b.parameters(), lr=plan.base_lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = plan.warmup_steps(total)
    lam = lambda t: t / warm if t < warm else 0.06 + 0.47 * (1 + math.cos(math.pi * (t - warm) / (total - 1 - warm)))
    sched_b = torch.optim.lr_scheduler.LambdaLR(opt_b, lam)

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 257, (args.batch, cfg.seq_len + 1), generator=g) for _ in range(8)]
    full = {"rlrs": [], "plain": []}
    update = {"rlrs": [], "plain": []}

    def step(name, model, opt, sched, x):
        t0 = time.perf_counter()
        out = model(x[:, :-1], x[:, 1:])
        out.loss.backward()
        t1 = time.perf_counter()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        full[name].append(t2 - t0)
        update[name].append(t2 - t1)

    for i in range(args.steps + 10):
        x = batches[i % len(batches)]
        arms = [("rlrs", model_a, opt_a, sched_a), ("plain", model_b, opt_b, sched_b)]
        for arm in arms if i % 2 == 0 else arms[::-1]:
            step(*arm, x)
    med = {k: statistics.median(v[10:]) for k, v in full.items()}
    umed = {k: statistics.median(v[10:]) for k, v in update.items()}
    n = count_params(model_a)["total"]
    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"model: micro-dense shape, vocab 257, {n / 1e6:.2f}M params; batch {args.batch} x {cfg.seq_len}; {args.steps} steps per arm")
    print(f"param groups: rlrs {len(opt_a.param_groups)} ({', '.join(g['component'] for g in opt_a.param_groups)}), plain 1")
    print(f"median step (fwd+bwd+opt+sched): rlrs {med['rlrs'] * 1e3:.2f} ms, plain {med['plain'] * 1e3:.2f} ms")
    print(f"median opt.step+sched.step:       rlrs {umed['rlrs'] * 1e3:.3f} ms, plain {umed['plain'] * 1e3:.3f} ms")
    print(f"overhead per training step: {(med['rlrs'] / med['plain'] - 1) * 100:+.2f}%  (ratio {med['rlrs'] / med['plain']:.4f})")
    print(f"optimizer+scheduler difference as a share of a step: {(umed['rlrs'] - umed['plain']) / med['plain'] * 100:+.2f}%")


if __name__ == "__main__":
    main()
