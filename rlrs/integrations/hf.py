"""Relative schedules in the Hugging Face Trainer (``pip install 'rlrs[hf]'``).

    from rlrs.integrations.hf import RelativeLRTrainer

    trainer = RelativeLRTrainer(plan="paper-dense", model=model, args=training_args,
                                train_dataset=train, eval_dataset=held_out)
    trainer.train()                                   # or trainer.train(resume_from_checkpoint=True)

What it changes, and nothing else:

- the optimizer: the one ``TrainingArguments.optim`` names (AdamW by default, with its betas and
  eps), built from ``rlrs.param_groups(model, plan)``; η_base is ``args.learning_rate``, and each
  component's weight decay comes from the plan (``args.weight_decay`` is not used: the plan owns it);
- the scheduler: ``rlrs.RelativeLR`` over the run's total steps (``args.lr_scheduler_type`` and
  ``warmup_*`` are not used: the plan has its own warmup);
- the logs: every component's LR as ``lr/<component>`` beside ``learning_rate``.

``resume_from_checkpoint`` continues exactly: the scheduler's state is the plan and the step, and
a checkpoint of another plan or length is refused (``RelativeLR.load_state_dict``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import ConfigError, require
from ..optim import RelativeLR, as_plan, param_groups
from ..plan import Plan

transformers = require("transformers", "hf")


class RelativeLRTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose optimizer and scheduler follow an rlrs plan.

    ``plan``: a :class:`~rlrs.plan.Plan`, a preset name or a plan file. ``rules``: extra
    ``(regex, component)`` classification rules for the model, as for ``rlrs.param_groups``.
    """

    def __init__(self, *args: Any, plan: Plan | str, rules=None, **kwargs: Any):
        if kwargs.get("optimizers", (None, None)) != (None, None):
            raise ConfigError("optimizers: RelativeLRTrainer builds the optimizer and scheduler from the plan; "
                              "leave optimizers unset, or use transformers.Trainer with your own")
        self.plan = as_plan(plan)
        self.rules = rules
        super().__init__(*args, **kwargs)
        # η_base is the learning rate the run was given, as for any Trainer run.
        self.plan = dataclasses.replace(self.plan, base_lr=float(self.args.learning_rate))

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            kwargs = {k: v for k, v in kwargs.items() if k not in ("lr", "weight_decay")}
            self.optimizer = optimizer_cls(param_groups(opt_model, self.plan, self.rules), lr=self.plan.base_lr,
                                           **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = RelativeLR(self.optimizer if optimizer is None else optimizer, self.plan,
                                           num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if isinstance(self.lr_scheduler, RelativeLR) and "loss" in logs:
            # The LR the last optimizer step used, per component (the Trainer's learning_rate is one group's).
            step = max(0, self.lr_scheduler.last_epoch - 1)
            logs.update({f"lr/{c}": lr for c, lr in self.lr_scheduler.lrs_by_component(step).items()})
        super().log(logs, *args, **kwargs)
