"""What makes rlrs's CPU training loop fast or slow on the ladder's presets.

    python benchmarks/cpu_loop.py [--presets ladder-xs-dense,ladder-m-dense,ladder-m-moe] [--steps 40]

Run on a quiet machine (it measures wall time). Every figure is tokens/s at the median step of
rlrs's own ``Trainer`` step (data batch, forward, backward, clipping, AdamW, scheduler, logging
record), after warm-up steps:

1. threads: one process at 1 and at 2 threads, and two 1-thread processes side by side (their
   summed tokens/s: what ``--workers 2`` gets from 2 cores);
2. ``train.compile=true`` (torch.compile) against eager, 1 thread (compile time reported apart);
3. where an MoE step's time goes against the dense model with the same active parameters: the
   step split into data, forward, backward, clipping and optimizer, and the forward/backward
   operators grouped into expert matmuls, routing (top-k, one-hot, cumsum, scatter, gather)
   and the rest, from ``torch.profiler``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import statistics
import tempfile
import time

import torch

from rlrs import data as _data
from rlrs.train import Trainer, run_config


def trainer(preset: str, threads: int, compile_: bool, out: str) -> Trainer:
    cfg = run_config(preset, sets={"train.threads": threads, "train.compile": compile_, "train.steps": 100_000,
                                   "train.eval_interval": 1.0, "train.checkpoint_interval": 1.0})
    return Trainer(cfg, out)


def step_times(t: Trainer, steps: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        t._train_step(False)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def tokens_per_s(preset: str, threads: int, compile_: bool, steps: int, barrier=None) -> tuple[float, float]:
    """(tokens/s at the median step, seconds of the 3 warm-up steps: compilation shows there)."""
    with tempfile.TemporaryDirectory() as d:
        t = trainer(preset, threads, compile_, d)
        t0 = time.perf_counter()
        step_times(t, 0, 3)
        ready = time.perf_counter() - t0
        if barrier is not None:
            barrier.wait()  # both processes time the same stretch of wall clock
        times = step_times(t, steps, 0)
        return t.cfg.train.batch_size * t.seq_len / statistics.median(times), ready


def _worker(preset: str, steps: int, q, barrier) -> None:
    q.put(tokens_per_s(preset, 1, False, steps, barrier)[0])


def side_by_side(preset: str, steps: int) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    barrier = ctx.Barrier(2)
    ps = [ctx.Process(target=_worker, args=(preset, steps, q, barrier)) for _ in range(2)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return q.get() + q.get()


def phases(preset: str, steps: int) -> dict[str, float]:
    """Median milliseconds of each part of a 1-thread training step."""
    with tempfile.TemporaryDirectory() as d:
        t = trainer(preset, 1, False, d)
        cfg = t.cfg.train
        parts: dict[str, list[float]] = {k: [] for k in ("data", "forward", "backward", "clip", "optimizer")}
        for i in range(steps + 3):
            c0 = time.perf_counter()
            x, y = _data.get_batch(t.data.train, i, cfg.batch_size, t.seq_len, cfg.data_seed)
            c1 = time.perf_counter()
            out = t.forward(x, y)
            loss = out.loss + out.aux_loss
            c2 = time.perf_counter()
            t.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            c3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), cfg.grad_clip)
            c4 = time.perf_counter()
            t.optimizer.step()
            t.scheduler.step()
            c5 = time.perf_counter()
            if i >= 3:
                for k, a, b in (("data", c0, c1), ("forward", c1, c2), ("backward", c2, c3), ("clip", c3, c4),
                                ("optimizer", c4, c5)):
                    parts[k].append((b - a) * 1e3)
        return {k: statistics.median(v) for k, v in parts.items()}


# MoE dispatch and combine (and their backward); generic ops both models use (cat, index for the
# embedding, cross-entropy's gathers) stay in "rest", so dense shows little here.
ROUTING = ("topk", "one_hot", "cumsum", "scatter", "bincount", "repeat", "index_put", "where", "clamp")


def operator_groups(preset: str, steps: int) -> dict[str, float]:
    """Milliseconds per step of forward + backward operators: expert bmm, other matmuls, routing, rest."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as d:
        t = trainer(preset, 1, False, d)
        cfg = t.cfg.train
        x, y = _data.get_batch(t.data.train, 0, cfg.batch_size, t.seq_len, cfg.data_seed)
        for _ in range(2):
            (t.forward(x, y).loss).backward()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                out = t.forward(x, y)
                (out.loss + out.aux_loss).backward()
        groups = {"bmm (experts)": 0.0, "mm/addmm/linear": 0.0, "routing": 0.0, "attention": 0.0, "rest": 0.0}
        for e in prof.key_averages():
            if e.key.startswith(("autograd::", "torch::autograd", "Optimizer")) or e.key.count("::") == 0:
                continue
            name = e.key.split("::")[-1]
            ms = e.self_cpu_time_total / 1e3 / steps
            if "bmm" in name:
                groups["bmm (experts)"] += ms
            elif name in ("mm", "addmm", "linear", "matmul"):
                groups["mm/addmm/linear"] += ms
            elif "attention" in name or "sdpa" in name or "flash" in name:
                groups["attention"] += ms
            elif any(name.startswith(r) for r in ROUTING):
                groups["routing"] += ms
            else:
                groups["rest"] += ms
        return groups


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="ladder-xs-dense,ladder-xs-moe,ladder-m-dense,ladder-m-moe")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: threads,compile,moe")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    presets = args.presets.split(",")
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {mp.cpu_count()} cores; {args.steps} timed steps")
    if "threads" not in skip:
        print("\n| preset | 1 thread | 2 threads | 2 processes x 1 thread (sum) |\n|---|---|---|---|")
        for p in presets:
            one, _ = tokens_per_s(p, 1, False, args.steps)
            two, _ = tokens_per_s(p, 2, False, args.steps)
            both = side_by_side(p, args.steps)
            print(f"| {p} | {one:,.0f} | {two:,.0f} | {both:,.0f} |", flush=True)
    if "compile" not in skip:
        print("\n| preset | eager, 1 thread | compiled, 1 thread | compilation (warm-up beyond eager's) |\n|---|---|---|---|")
        for p in presets:
            eager, ready_eager = tokens_per_s(p, 1, False, args.steps)
            comp, ready = tokens_per_s(p, 1, True, args.steps)
            print(f"| {p} | {eager:,.0f} | {comp:,.0f} ({comp / eager:.2f}x) | {ready - ready_eager:.0f} s |", flush=True)
    if "moe" not in skip:
        pairs = sorted({p.rsplit("-", 1)[0] for p in presets})
        for base in pairs:
            dense, moe = f"{base}-dense", f"{base}-moe"
            pd, pm = phases(dense, args.steps), phases(moe, args.steps)
            print(f"\n{base}: step phases, ms (1 thread)\n| phase | dense | moe | moe - dense |\n|---|---|---|---|")
            for k in pd:
                print(f"| {k} | {pd[k]:.2f} | {pm[k]:.2f} | {pm[k] - pd[k]:+.2f} |")
            print(f"| total | {sum(pd.values()):.2f} | {sum(pm.values()):.2f} | {sum(pm.values()) - sum(pd.values()):+.2f} |")
            gd, gm = operator_groups(dense, 10), operator_groups(moe, 10)
            print(f"\n{base}: forward + backward operators, ms per step (1 thread, profiler)\n"
                  "| group | dense | moe | moe - dense |\n|---|---|---|---|")
            for k in gd:
                print(f"| {k} | {gd[k]:.2f} | {gm[k]:.2f} | {gm[k] - gd[k]:+.2f} |", flush=True)


if __name__ == "__main__":
    main()
