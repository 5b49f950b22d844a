"""Training throughput (tokens/s) of rlrs's reference models.

    python benchmarks/throughput.py [--preset micro-dense] [--steps 30] [--threads 2]

1. The rlrs dense model against a minimal nanoGPT-style model of the same shape written here
   (same d_model, layers, heads, RMSNorm, RoPE, SwiGLU with d_ff = 4·d_model, untied embeddings),
   so the ratio measures what rlrs's implementation costs (goal: ratio >= 1.0).
2. MoE (micro-moe: 8 experts, top-1) against dense (micro-dense) at equal active parameters.

Each measurement is a full training step (forward, backward, AdamW step); arms alternate step by
step so that noise hits both alike; the figure is tokens per second at the median step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from rlrs.models import build_model, count_params, get_size


class MiniBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.n1 = nn.RMSNorm(d, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.n2 = nn.RMSNorm(d, eps=1e-6)
        self.w1 = nn.Linear(d, 4 * d, bias=False)
        self.w3 = nn.Linear(d, 4 * d, bias=False)
        self.w2 = nn.Linear(4 * d, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        h = self.n2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class MiniGPT(nn.Module):
    """nanoGPT-style: the whole model in a screenful, no MoE, no options."""

    def __init__(self, vocab, d, layers, heads, seq_len):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(MiniBlock(d, heads) for _ in range(layers))
        self.ln_f = nn.RMSNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(seq_len).float(), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, idx, targets):
        x = self.wte(idx)
        t = idx.shape[1]
        for blk in self.blocks:
            x = blk(x, self.cos[:t], self.sin[:t])
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def measure(arms: dict, steps: int, batch: int, seq: int, vocab: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(4)]
    times = {k: [] for k in arms}
    for i in range(steps + 3):
        x = xs[i % len(xs)]
        order = list(arms.items()) if i % 2 == 0 else list(arms.items())[::-1]
        for name, (model, opt, loss_fn) in order:
            t0 = time.perf_counter()
            loss = loss_fn(model, x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    return {k: batch * seq / statistics.median(v[3:]) for k, v in times.items()}


def rlrs_loss(model, x, y):
    out = model(x, y)
    return out.loss + out.aux_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense_cfg = dataclasses.replace(get_size("micro-dense"), vocab_size=args.vocab)
    moe_cfg = dataclasses.replace(get_size("micro-moe"), vocab_size=args.vocab)
    seq = dense_cfg.seq_len
    dense = build_model(dense_cfg)
    mini = MiniGPT(args.vocab, dense_cfg.d_model, dense_cfg.n_layers, dense_cfg.n_heads, seq)
    moe = build_model(moe_cfg)
    n_dense = count_params(dense)["total"]
    n_mini = sum(p.numel() for p in mini.parameters())
    assert n_dense == n_mini, (n_dense, n_mini)  # same shape, same parameter count
    adam = lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3)
    arms = {
        "rlrs dense": (dense, adam(dense), rlrs_loss),
        "nanoGPT-style": (mini, adam(mini), lambda m, x, y: m(x, y)),
        "rlrs moe": (moe, adam(moe), rlrs_loss),
    }
    tps = measure(arms, args.steps, args.batch, seq, args.vocab)
    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, CPU")
    print(f"shape: d_model {dense_cfg.d_model}, {dense_cfg.n_layers} layers, {dense_cfg.n_heads} heads, seq {seq}, vocab {args.vocab}, batch {args.batch}")
    for k, v in tps.items():
        print(f"  {k:14s} {v:9.0f} tokens/s")
    print(f"rlrs dense / nanoGPT-style: {tps['rlrs dense'] / tps['nanoGPT-style']:.3f}")
    c = count_params(moe)
    print(f"moe / dense at equal active params ({c['active_non_embedding'] / 1e6:.2f}M vs "
          f"{count_params(dense)['active_non_embedding'] / 1e6:.2f}M non-embedding): {tps['rlrs moe'] / tps['rlrs dense']:.3f}")


if __name__ == "__main__":
    main()
