"""A Hugging Face Trainer script that rlrs can drive: a tiny Llama built from a config, trained on
rlrs's Shakespeare cache, with the optimizer and scheduler built from the run's plan.

    python examples/hf_trainer.py
    rlrs compare --command 'python examples/hf_trainer.py' --steps 200 --seeds 3 --out runs/hf

The rlrs part: ``rlrs.param_groups`` / ``rlrs.RelativeLR`` from ``rlrs.script.plan()`` go to the
Trainer through ``optimizers=``, ``rlrs.integrations.hf.PlanCheck`` checks when training begins that
the schedule's length is the Trainer's optimizer steps, and a callback reports each evaluation with
``rlrs.report``. (``rlrs.integrations.hf.RelativeLRTrainer`` does the optimizer, scheduler and check
itself.)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
from torch.utils.data import Dataset

import rlrs
from rlrs.data import DataConfig, get_batch, prepare, val_batches


class Windows(Dataset):
    """Fixed-length token windows: training batches depend only on (seed, index), like rlrs's own."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        x, y = self.pairs[i]
        return {"input_ids": x, "labels": x}  # HF shifts the labels itself


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from rlrs.integrations.hf import PlanCheck

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=0, help="steps between evals (default: 10%% of training)")
    args = p.parse_args()

    plan = rlrs.script.plan("paper-dense")
    seed = rlrs.script.seed()
    steps = rlrs.script.steps(args.steps)
    data = prepare(DataConfig(corpus=args.corpus, tokenizer="bytes", cache_dir=args.cache_dir))
    train = Windows([tuple(t[0] for t in get_batch(data.train, i, 1, args.seq_len, seed))
                     for i in range(steps * args.batch_size)])
    held_out = Windows([(x[0], y[0]) for xb, yb in val_batches(data.val, 4, args.batch_size, args.seq_len)
                        for x, y in [(xb[i:i + 1], yb[i:i + 1]) for i in range(len(xb))]])

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=data.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=args.seq_len,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan), betas=(0.9, 0.95))
    sched = rlrs.RelativeLR(opt, plan, steps)  # the Trainer calls sched.step() after each opt.step(): max_steps

    class Report(TrainerCallback):
        def on_evaluate(self, _args, state, _control, metrics=None, **_kw):
            rlrs.report(state.global_step, metrics["eval_loss"])

    every = args.eval_every or max(1, steps // 10)
    out = str(rlrs.script.run_dir() or tempfile.mkdtemp(prefix="hf-run-"))
    targs = TrainingArguments(
        output_dir=os.path.join(out, "hf"), max_steps=steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, eval_strategy="steps", eval_steps=every, logging_steps=every,
        save_strategy="no", report_to=[], seed=seed, data_seed=seed, max_grad_norm=1.0, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=held_out, optimizers=(opt, sched),
                      callbacks=[PlanCheck(), Report()])
    trainer.train()
    if trainer.state.global_step % every:  # the last step, if it is not an eval step already
        trainer.evaluate()


if __name__ == "__main__":
    main()
