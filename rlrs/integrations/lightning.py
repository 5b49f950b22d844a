"""Relative schedules in PyTorch Lightning (``pip install 'rlrs[lightning]'``).

    import lightning as L
    from rlrs.integrations.lightning import RelativeLRMonitor, configure_optimizers

    class LitLM(L.LightningModule):
        ...
        def configure_optimizers(self):
            return configure_optimizers(self, "paper-dense", lr=3e-3)

    L.Trainer(max_steps=1000, callbacks=[RelativeLRMonitor()]).fit(LitLM(), data)

``configure_optimizers`` builds the optimizer from ``rlrs.param_groups(module, plan)`` and
returns ``RelativeLR`` as a step-interval scheduler over the run's steps
(``trainer.estimated_stepping_batches``); ``RelativeLRMonitor`` logs every component's LR as
``lr/<component>``. Lightning saves and restores the scheduler with its checkpoints, so
``fit(..., ckpt_path=...)`` continues exactly, and a checkpoint of another plan or length is
refused (``RelativeLR.load_state_dict``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import ConfigError, require
from ..optim import RelativeLR, as_plan, param_groups
from ..plan import Plan

L = require("lightning", "lightning")


def configure_optimizers(
    module: "L.LightningModule",
    plan: Plan | str,
    lr: float | None = None,
    *,
    total_steps: int | None = None,
    optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
    rules=None,
    **optimizer_kwargs: Any,
) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns, from an rlrs plan.

    ``lr``: η_base (default: the plan's). ``total_steps``: the schedule's length (default: the
    trainer's ``estimated_stepping_batches``). ``optimizer`` and ``optimizer_kwargs``: any
    ``torch.optim`` optimizer and its settings (the plan owns ``lr`` and ``weight_decay``).
    """
    plan = as_plan(plan)
    if lr is not None:
        plan = dataclasses.replace(plan, base_lr=float(lr))
    for key in ("lr", "weight_decay"):
        if key in optimizer_kwargs:
            raise ConfigError(f"{key}: the plan sets it (η_base: the lr argument; weight decay: plan.weight_decay)")
    if total_steps is None:
        total = module.trainer.estimated_stepping_batches
        if total is None or total == float("inf"):
            raise ConfigError("total_steps: the trainer has no finite length; give Trainer(max_steps=N) or total_steps=N")
        total_steps = int(total)
    opt = optimizer(param_groups(module, plan, rules), lr=plan.base_lr, **optimizer_kwargs)
    return {"optimizer": opt,
            "lr_scheduler": {"scheduler": RelativeLR(opt, plan, total_steps), "interval": "step", "frequency": 1}}


class RelativeLRMonitor(L.Callback):
    """Logs every component's LR (the one the step just used) as ``lr/<component>``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, RelativeLR):
                step = max(0, sched.last_epoch - 1)
                pl_module.log_dict({f"lr/{c}": v for c, v in sched.lrs_by_component(step).items()},
                                   on_step=True, on_epoch=False)
