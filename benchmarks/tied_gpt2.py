"""Hugging Face GPT-2 (tied ``wte``/``lm_head``, learned ``wpe``), built from a config and trained
by a plain loop that rlrs drives: the second model of the tied-weights study (``benchmarks/tied.sh``).

    rlrs lr-grid --command 'python benchmarks/tied_gpt2.py' --steps 650 --seeds 3 \
        --plans benchmarks/plans/tied-unembedding.toml,benchmarks/plans/tied-embedding.toml --out bench/tied-gpt2

The shapes follow ``ladder-xs-dense`` (d_model 32, 2 layers, heads of 16, seq_len 128, the same
1024-id BPE on Shakespeare, batch 16, eval every 2% on 8 fixed batches), so the two models of the
study differ in their layout (learned position embedding, GELU MLP, biases), not in their size.
"""

from __future__ import annotations

import argparse
import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import rlrs
from rlrs.data import DataConfig, get_batch, prepare, val_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=650, help="training steps ($RLRS_STEPS wins when rlrs sets it)")
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()

    plan = rlrs.script.plan("paper-dense")
    seed = rlrs.script.seed()
    steps = rlrs.script.steps(args.steps)
    torch.set_num_threads(1)

    data = prepare(DataConfig(corpus="shakespeare", tokenizer="bpe-1024"))
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=data.vocab_size, n_positions=args.seq_len, n_embd=args.d_model,
                        n_layer=args.layers, n_head=max(1, args.d_model // 16), resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                        tie_word_embeddings=True)
    model = GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie under study
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan), betas=(0.9, 0.95), eps=1e-8)
    sched = rlrs.RelativeLR(opt, plan, steps)
    evals = val_batches(data.val, 8, args.batch_size, args.seq_len)
    every = max(1, round(0.02 * steps))

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(model(input_ids=x, labels=None).logits.flatten(0, 1).log_softmax(-1)
                       .gather(1, y.flatten()[:, None]).neg().mean().item() for x, y in evals) / len(evals)
        model.train()
        return loss

    rlrs.report(0, evaluate())
    for step in range(steps):
        x, y = get_batch(data.train, step, args.batch_size, args.seq_len, seed)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        done = step + 1
        if done % every == 0 or done == steps:
            ev = evaluate()
            rlrs.report(done, ev)
            if not math.isfinite(ev):
                raise SystemExit("diverged")


if __name__ == "__main__":
    main()
