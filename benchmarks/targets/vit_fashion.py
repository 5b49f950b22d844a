"""A small vision Transformer on Fashion-MNIST that rlrs can drive: a model the RLRS paper never trained.

    python benchmarks/targets/vit_fashion.py                        # trains alone with uniform-dense
    rlrs lr-grid --command 'python benchmarks/targets/vit_fashion.py' --steps 400 --plans uniform-dense
    rlrs tune --command 'python benchmarks/targets/vit_fashion.py --optimizer muon' --steps 400 --budget 20

The images are Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``; read
from /usr/share/datasets/fashion-mnist, nothing is downloaded). 28x28 images are cut into 49
patches of 4x4 pixels; a linear patch embedding and a learned position embedding (component
``embedding``), pre-norm blocks (``attention``, ``feedforward``) and a linear head on the mean of
the tokens (``unembedding``). ``--optimizer muon`` trains the hidden matrices with
``torch.optim.Muon`` through :func:`rlrs.muon_split` (the rest with AdamW), one plan driving both.

The eval loss is the cross-entropy on a fixed 1,000 test images; the batches depend only on the
seed and the step, so two arms of one seed see the same data.
"""

from __future__ import annotations

import argparse
import gzip
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import rlrs

DATA = Path("/usr/share/datasets/fashion-mnist")
RULES = ((r"^patch\.", "embedding"), (r"^pos$", "embedding"), (r"^head\.", "unembedding"))


def _idx(name: str) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: install it with `apt-get install dataset-fashion-mnist`")
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float patches (N, 49, 16) scaled to zero mean, unit variance; labels (N,)."""
    prefix = "train" if split == "train" else "t10k"
    x = torch.from_numpy(_idx(f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0)
    y = torch.from_numpy(_idx(f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
    x = (x - 0.2860) / 0.3530
    patches = x.reshape(-1, 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(-1, 49, 16)
    return patches, y


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, d: int = 64, layers: int = 3, heads: int = 4, classes: int = 10):
        super().__init__()
        self.patch = nn.Linear(16, d)
        self.pos = nn.Parameter(torch.randn(49, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps ($RLRS_STEPS wins when rlrs sets it)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--d-model", type=int, default=48)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--eval-images", type=int, default=1000)
    args = p.parse_args()

    plan = rlrs.script.plan("uniform-dense")
    seed = rlrs.script.seed()
    steps = rlrs.script.steps(args.steps)
    torch.set_num_threads(1)  # rlrs runs several runs side by side; one thread each

    x_train, y_train = load("train")
    x_test, y_test = load("test")
    x_test, y_test = x_test[:args.eval_images], y_test[:args.eval_images]
    torch.manual_seed(seed)
    model = ViT(args.d_model, args.layers)
    groups = rlrs.param_groups(model, plan, rules=RULES, merge=False)  # muon_split needs one component per group
    if args.optimizer == "muon":
        muon, adamw = rlrs.muon_split(groups)
        opts = [torch.optim.Muon(muon, adjust_lr_fn="match_rms_adamw"), torch.optim.AdamW(adamw)]
    else:
        opts = [torch.optim.AdamW(groups)]
    scheds = [rlrs.RelativeLR(o, plan, steps) for o in opts]
    every = max(1, round(0.05 * steps))
    data_rng = torch.Generator().manual_seed(1000 + seed)

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(F.cross_entropy(model(x_test[i:i + 500]), y_test[i:i + 500], reduction="sum").item()
                       for i in range(0, len(x_test), 500)) / len(x_test)
        model.train()
        return loss

    rlrs.report(0, evaluate())
    for step in range(steps):
        idx = torch.randint(len(x_train), (args.batch_size,), generator=data_rng)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        done = step + 1
        if done % every == 0 or done == steps:
            ev = evaluate()
            rlrs.report(done, ev)
            if not math.isfinite(ev):
                raise SystemExit("diverged")
    print(f"eval loss {ev:.4f} after {steps} steps", flush=True)


if __name__ == "__main__":
    main()
