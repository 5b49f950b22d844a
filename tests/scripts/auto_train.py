"""A tiny training script for the ``rlrs auto --command`` tests: real models, real updates.

    python auto_train.py MODE [STEPS]
        MODE: rlrs | hf | own-scheduler | nan

``rlrs``: rlrs's ``tiny-dense`` model on random tokens, AdamW over ``rlrs.param_groups`` and
``rlrs.RelativeLR``. ``hf``: a tiny transformers Llama (untied) under
``rlrs.integrations.hf.RelativeLRTrainer``. ``own-scheduler``: ``rlrs`` with the script's own
``LambdaLR`` instead of ``RelativeLR`` (so it never reports update sizes). ``nan``: ``rlrs`` whose
loss turns NaN after the first report. Each reports the eval loss every STEPS // 10 steps.
"""

import sys

import torch

import rlrs

mode = sys.argv[1]
steps = rlrs.script.steps(int(sys.argv[2]) if len(sys.argv) > 2 else 20)
plan = rlrs.script.plan("uniform-dense")
seed = rlrs.script.seed()
every = max(1, steps // 10)
torch.manual_seed(seed)
torch.set_num_threads(1)
VOCAB, SEQ, BATCH = 64, 16, 4
g = torch.Generator().manual_seed(seed)
data = torch.randint(0, VOCAB, (steps + 1, BATCH, SEQ), generator=g)
held_out = torch.randint(0, VOCAB, (2, BATCH, SEQ), generator=torch.Generator().manual_seed(1234))

if mode == "hf":
    import transformers

    from rlrs.integrations.hf import RelativeLRTrainer

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=SEQ, tie_word_embeddings=False))

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return len(data) * BATCH

        def __getitem__(self, i):
            x = data[i // BATCH, i % BATCH]
            return {"input_ids": x, "labels": x}

    def evaluate():
        model.eval()
        with torch.no_grad():
            loss = sum(model(input_ids=x, labels=x).loss.item() for x in held_out) / len(held_out)
        model.train()
        return loss

    class Report(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step % every == 0 or state.global_step == steps:
                rlrs.report(state.global_step, evaluate())

    import tempfile

    args = transformers.TrainingArguments(
        output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=plan.base_lr,
        logging_steps=every, save_strategy="no", report_to=[], use_cpu=True, seed=seed, disable_tqdm=True,
        dataloader_num_workers=0)
    rlrs.report(0, evaluate())
    RelativeLRTrainer(plan=plan, model=model, args=args, train_dataset=Windows(), callbacks=[Report()]).train()
    sys.exit(0)

from rlrs.models import build_model, get_size  # noqa: E402

import dataclasses  # noqa: E402

model = build_model(dataclasses.replace(get_size("tiny-dense"), vocab_size=VOCAB, seq_len=SEQ))
opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
if mode == "own-scheduler":
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
else:
    sched = rlrs.RelativeLR(opt, plan, steps)


def loss_of(x):
    out = model(x[:, :-1], x[:, 1:])
    return out.loss


def evaluate():
    with torch.no_grad():
        return sum(loss_of(x).item() for x in held_out) / len(held_out)


rlrs.report(0, evaluate())
for step in range(steps):
    loss = loss_of(data[step])
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    done = step + 1
    if done % every == 0 or done == steps:
        rlrs.report(done, float("nan") if mode == "nan" else evaluate())
