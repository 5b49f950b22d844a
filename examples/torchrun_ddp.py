"""A data-parallel script for ``torchrun`` that rlrs can drive; only rank 0 reports.

    torchrun --standalone --nproc_per_node 2 examples/torchrun_ddp.py
    rlrs compare --command 'torchrun --standalone --nproc_per_node 2 examples/torchrun_ddp.py' \\
        --steps 200 --seeds 3 --out runs/ddp

Every rank builds the same model from ``$RLRS_SEED`` and its param groups from ``$RLRS_PLAN``;
``rlrs.report`` writes only on rank 0, with the loss averaged over ranks. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist

import rlrs
from nanogpt import GPT  # the model of examples/nanogpt.py (this directory is on sys.path)
from rlrs.data import DataConfig, get_batch, prepare, val_batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--corpus", default="shakespeare")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--batch-size", type=int, default=16, help="global batch, split over the ranks")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every", type=int, default=0)
    args = p.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    plan, seed, steps = rlrs.script.plan("paper-dense"), rlrs.script.seed(), rlrs.script.steps(args.steps)

    # Rank 0 tokenizes first; the others then open the finished cache.
    cfg = DataConfig(corpus=args.corpus, tokenizer="bytes", cache_dir=args.cache_dir)
    data = prepare(cfg) if rank == 0 else None
    dist.barrier()
    data = data or prepare(cfg)
    torch.manual_seed(seed)
    model = GPT(data.vocab_size, 64, 2, 2, args.seq_len).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan), betas=(0.9, 0.95))
    sched = rlrs.RelativeLR(opt, plan, steps)
    evals = val_batches(data.val, 4, args.batch_size, args.seq_len, rank=rank, world_size=world)
    every = args.eval_every or max(1, round(0.05 * steps))

    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = torch.tensor(sum(model(x.to(device), y.to(device)).item() for x, y in evals) / len(evals), device=device)
        dist.all_reduce(loss)
        model.train()
        return loss.item() / world

    rlrs.report(0, evaluate())
    for step in range(steps):
        x, y = get_batch(data.train, step, args.batch_size, args.seq_len, seed, rank=rank, world_size=world)
        loss = ddp(x.to(device), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % every == 0 or step + 1 == steps:
            rlrs.report(step + 1, evaluate())  # writes on rank 0 only
    # Not a plain return: gloo's threads may still be freeing the last all_reduce's tensor, and
    # Python's shutdown then aborts the process (rlrs.script's docstring says more).
    rlrs.script.end_distributed()


if __name__ == "__main__":
    main()
