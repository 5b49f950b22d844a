"""A plain-PyTorch nanoGPT-style script that rlrs can drive (``rlrs compare/tune --command``).

    python examples/nanogpt.py                                  # trains alone with paper-dense
    rlrs compare --command 'python examples/nanogpt.py' --steps 300 --seeds 3 --out runs/mine
    rlrs tune --command 'python examples/nanogpt.py' --steps 300 --budget 30 --out runs/tune-mine

What makes it rlrs-drivable is four lines, marked ``# rlrs``: the plan, the seed and the length
come from the environment rlrs sets, and the eval loss goes back with ``rlrs.report``.
It checkpoints into ``$RLRS_RUN_DIR`` (``--checkpoint-every``) and resumes from there, so a run
that rlrs restarts (after a kill, or after ``--prune`` stopped it at a rung) continues.

What was taken out of nanoGPT's ``train.py``, marked ``# removed``: its ``get_lr`` and the loop
that writes every group's ``lr`` each step (``RelativeLR`` sets each group's LR from the plan; left
in, it would overwrite the plan, and ``RelativeLR`` stops the run saying so), its
``configure_optimizers`` groups (``rlrs.param_groups`` makes them), and its fixed ``out_dir``
(checkpoints go to ``rlrs.script.run_dir()``, one directory per run, so parallel runs never
overwrite each other's). ``--tie`` ties ``wte`` and ``lm_head`` as nanoGPT does; the plan's
``tied`` says which schedule the shared tensor follows.
"""

from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import rlrs
from rlrs.data import DataConfig, get_batch, prepare, val_batches


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's layout and names (transformer.wte/wpe/h.N.attn/h.N.mlp/ln_f, lm_head)."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq_len: int, tie: bool = False):
        super().__init__()
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(vocab, d), "wpe": nn.Embedding(seq_len, d),
            "h": nn.ModuleList(Block(d, heads) for _ in range(layers)), "ln_f": nn.LayerNorm(d),
        })
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tie:  # nanoGPT's weight tying: one tensor for the input embedding and the output head
            self.lm_head.weight = self.transformer.wte.weight
            nn.init.normal_(self.lm_head.weight, std=0.02)  # nanoGPT's init: N(0, 1) rows would make huge logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps ($RLRS_STEPS wins when rlrs sets it)")
    p.add_argument("--corpus", default="shakespeare", help="rlrs corpus: shakespeare, or text files/directories")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=0, help="steps between evals (default: 5%% of training)")
    p.add_argument("--tie", action="store_true", help="tie wte and lm_head (nanoGPT's default)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between checkpoints in $RLRS_RUN_DIR (0: none)")
    args = p.parse_args()

    plan = rlrs.script.plan("paper-dense")  # rlrs: $RLRS_PLAN, or this preset when run alone
    seed = rlrs.script.seed()  # rlrs: the paired seed ($RLRS_SEED)
    steps = rlrs.script.steps(args.steps)  # rlrs: $RLRS_STEPS when the tool was given --steps

    data = prepare(DataConfig(corpus=args.corpus, tokenizer="bytes", cache_dir=args.cache_dir))
    torch.manual_seed(seed)
    model = GPT(data.vocab_size, args.d_model, args.layers, max(1, args.d_model // 32), args.seq_len, args.tie)
    # removed: nanoGPT's configure_optimizers (its decay/no-decay groups): param_groups makes them per component
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan), betas=(0.9, 0.95))
    sched = rlrs.RelativeLR(opt, plan, steps)  # rlrs: every group's LR, every step, from the plan
    evals = val_batches(data.val, 4, args.batch_size, args.seq_len)
    every = args.eval_every or max(1, round(0.05 * steps))

    start = 0
    # removed: a fixed out_dir; rlrs gives each run its own directory (parallel runs never share one)
    ckpt = rlrs.script.run_dir() / "checkpoint.pt" if rlrs.script.run_dir() else None
    if ckpt is not None and ckpt.exists():  # resume where an interrupted run of this plan stopped
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["step"]

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(model(x, y).item() for x, y in evals) / len(evals)
        model.train()
        return loss

    if start % every == 0:
        # At step 0, and again where a checkpoint resumes: a kill between that checkpoint's save and
        # its report would otherwise leave the step unreported (rlrs replaces a step reported twice).
        rlrs.report(start, evaluate())
    for step in range(start, steps):
        # removed: lr = get_lr(step); for g in optimizer.param_groups: g["lr"] = lr  (it would overwrite the plan)
        x, y = get_batch(data.train, step, args.batch_size, args.seq_len, seed)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        # The checkpoint before the report: --prune may stop the run right after a report.
        if ckpt is not None and args.checkpoint_every and (done % args.checkpoint_every == 0) and done < steps:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": done}, tmp)
            os.replace(tmp, ckpt)  # atomic: a kill leaves the old checkpoint or the new one
        if done % every == 0 or done == steps:
            ev = evaluate()
            rlrs.report(done, ev)  # rlrs: completed steps and held-out loss
            print(f"step {done}/{steps} train {loss.item():.4f} eval {ev:.4f}", flush=True)
            if not math.isfinite(ev):
                raise SystemExit("diverged")


if __name__ == "__main__":
    main()
