"""Tokens/s and MFU of the paper's 34M presets on one GPU (the GPU part of the evidence).

    python benchmarks/gpu_throughput.py [--presets dense-34m,moe-34m] [--batch 32] [--steps 30]

rlrs's own ``Trainer`` step (bf16 autocast, fused AdamW, ``torch.compile``; the paper's seq_len
512 and GPT-2 vocabulary) at ``--batch`` sequences. MFU = model FLOPs per second / the GPU's peak
dense bf16 FLOP/s, with model FLOPs per token = 6 × (active non-embedding parameters + the
unembedding) + 12 × layers × d_model × seq_len (attention scores, forward and backward; PaLM's
appendix B count). ``--smoke`` runs the tiny presets on the CPU to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from rlrs.models import count_params
from rlrs.train import Trainer, run_config

# Dense bf16 peak (no sparsity), TFLOP/s, by a substring of torch.cuda.get_device_name(); the
# first match wins, so the PCIe and NVL H100s (lower clocks) come before the SXM default.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0,
               "A10G": 125.0}


def flops_per_token(cfg) -> float:
    m = cfg.model
    c = count_params(m)
    return 6.0 * (c["active_non_embedding"] + m.vocab_size * m.d_model) + 12.0 * m.n_layers * m.d_model * m.seq_len


def measure(preset: str, batch: int, steps: int, smoke: bool) -> dict:
    sets = {"train.steps": 100_000, "train.eval_interval": 1.0, "train.checkpoint_interval": 1.0,
            "train.batch_size": batch}
    if not smoke:
        sets.update({"train.compile": True, "train.precision": "bf16", "train.device": "cuda"})
    cfg = run_config(preset, sets=sets)
    with tempfile.TemporaryDirectory() as d:
        t = Trainer(cfg, d)
        t0 = time.perf_counter()
        for _ in range(3):
            t._train_step(False)  # warm-up and compilation
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        ready = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            s0 = time.perf_counter()
            t._train_step(False)
            sync()
            times.append(time.perf_counter() - s0)
        tps = batch * t.seq_len / statistics.median(times)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    achieved = flops_per_token(cfg) * tps
    return {"preset": preset, "device": name, "batch": batch, "seq_len": cfg.model.seq_len, "tokens_per_s": tps,
            "model_tflops": achieved / 1e12, "peak_tflops": peak, "mfu": None if peak is None else achieved / (peak * 1e12),
            "warmup_s": ready, "compile": not smoke, "precision": "fp32" if smoke else "bf16", "torch": torch.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="dense-34m,moe-34m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="tiny presets on the CPU: check the script only")
    ap.add_argument("--out", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_throughput: no CUDA device; use --smoke to check the script on a CPU")
    presets = "tiny-dense,tiny-moe" if args.smoke and args.presets == "dense-34m,moe-34m" else args.presets
    rows = []
    for preset in presets.split(","):
        r = measure(preset, args.batch, args.steps, args.smoke)
        rows.append(r)
        mfu = "n/a" if r["mfu"] is None else f"{r['mfu']:.1%}"
        print(f"{r['preset']}: {r['tokens_per_s']:,.0f} tokens/s, {r['model_tflops']:.1f} TFLOP/s, MFU {mfu} "
              f"({r['device']}, batch {r['batch']}x{r['seq_len']}, {r['precision']}, compile {r['compile']}, "
              f"warm-up {r['warmup_s']:.0f} s)", flush=True)
        if args.out:  # after every preset: a lease that ends mid-way still returns the rows so far
            with open(args.out, "w") as f:
                json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
