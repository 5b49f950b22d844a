"""Run by torchrun (2 processes, gloo, CPU): rlrs's param groups and RelativeLR on an FSDP2
(``fully_shard``) model. Rank 0 writes what the optimizer's groups hold to the file in argv[1]."""

import json
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import rlrs
from rlrs.models import ModelConfig, build_model


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=64, seq_len=16, d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=1))
    names_before = [n for n, _ in model.named_parameters()]
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    plan = rlrs.presets.get("paper-moe")
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
    sched = rlrs.RelativeLR(opt, plan, 10)
    g = torch.Generator().manual_seed(dist.get_rank())
    losses = []
    for step in range(3):
        x = torch.randint(0, 64, (2, 16), generator=g)
        out = model(x, x)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(out.loss.item())
    if dist.get_rank() == 0:
        report = {
            "same_names": [n for n, _ in model.named_parameters()] == names_before,
            "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters()),
            "groups": [{"components": list(gr["components"]), "lr": gr["lr"]} for gr in opt.param_groups],
            "expected": {c: plan.lr(c, 3, 10) for c in rlrs.COMPONENTS},
            "losses": losses,
        }
        with open(sys.argv[1], "w") as f:
            json.dump(report, f)
    rlrs.script.end_distributed()  # gloo's threads and Python's shutdown: see rlrs.script


if __name__ == "__main__":
    main()
