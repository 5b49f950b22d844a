"""Relative schedules in the Hugging Face Trainer (``pip install 'rlrs[hf]'``).

    from rlrs.integrations.hf import RelativeLRTrainer

    trainer = RelativeLRTrainer(plan="paper-dense", model=model, args=training_args,
                                train_dataset=train, eval_dataset=held_out)
    trainer.train()                                   # or trainer.train(resume_from_checkpoint=True)

What it changes, and nothing else:

- the optimizer: the one ``TrainingArguments.optim`` names (AdamW by default, with its betas and
  eps), built from ``rlrs.param_groups(model, plan)``. η_base is ``args.learning_rate`` when it is
  set, and the plan's ``base_lr`` when it is left at the arguments' default (5e-5 for
  ``TrainingArguments``; an explicit 5e-5 reads the same, so it also means "the plan's": put
  ``base_lr=5e-5`` in the plan to train at 5e-5). The log says which one it is.
- the scheduler: ``rlrs.RelativeLR`` over the run's optimizer steps (``max_steps``, or
  ``num_train_epochs`` × optimizer steps per epoch, gradient accumulation counted).
- the logs: ``learning_rate`` is η_base × the plan's base schedule (the LR of a component with
  λ = 1, that is the uniform plan's), beside every component's LR as ``lr/<component>`` (LoRA+ B
  matrices as ``lr/<component>/lora_B``).

The plan owns the schedule, its warmup and the weight decay, so ``TrainingArguments`` that would
set them too (``lr_scheduler_type``, ``lr_scheduler_kwargs``, ``warmup_steps``/``warmup_ratio``,
``weight_decay``, unless it restates the plan's one weight decay) are refused when they are not
the defaults, naming the plan field to use.

``resume_from_checkpoint`` continues exactly: the scheduler's state is the plan and the step, and
a checkpoint of another plan or length is refused, naming what differs and what to do.

With a plain ``transformers.Trainer(optimizers=(opt, sched))`` (groups from ``rlrs.param_groups``,
``sched`` a ``RelativeLR``), add ``callbacks=[PlanCheck()]``: it refuses a schedule whose length
is not the Trainer's optimizer steps, and rlrs groups driven by another scheduler.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from ..components import COMPONENTS
from ..config import ConfigError, differences, require
from ..optim import RelativeLR, as_plan, param_groups
from ..plan import ComponentPlan, Plan

transformers = require("transformers", "hf")

logger = logging.getLogger(__name__)

SCHEDULER_FILE = "scheduler.pt"  # what the Trainer writes into each checkpoint (transformers.trainer.SCHEDULER_NAME)


def _unwrap_scheduler(sched: Any) -> Any:
    # Accelerate (and DeepSpeed through it) wrap the scheduler; the RelativeLR is inside.
    while not isinstance(sched, torch.optim.lr_scheduler.LRScheduler) and hasattr(sched, "scheduler"):
        sched = sched.scheduler
    return sched


def reference_lr(plan: Plan, step: int, total_steps: int, components=COMPONENTS) -> float:
    """η_base × the plan's base schedule at ``step``: the LR of a component with λ_start = λ_end = 1
    (what the uniform plan gives every component), through ``Plan.lr``. Its shape is the one the
    plan's ``components`` share (cosine when they differ); no width, depth or LoRA+ factor."""
    shapes = {plan.component(c).shape for c in components}
    shape = shapes.pop() if len(shapes) == 1 else "cosine"
    return dataclasses.replace(plan, other=ComponentPlan(shape=shape)).lr("other", step, total_steps)


def logged_lrs(sched: RelativeLR, step: int) -> dict[str, float]:
    """What a Trainer log gets for the LRs of schedule step ``step``: ``learning_rate`` (see
    :func:`reference_lr`) and ``lr/<component>`` for every component, ``lr/<component>/lora_B``
    for LoRA+ B groups."""
    groups = sched.optimizer.param_groups
    out = {"learning_rate": reference_lr(sched.plan, step, sched.total_steps,
                                         [c for g in groups for c in g["components"]])}
    out.update({f"lr/{c}": lr for c, lr in sched.lrs_by_component(step).items()})
    for g in groups:
        if g.get("lora_b"):
            for c in g["components"]:
                out[f"lr/{c}/lora_B"] = sched.plan.lr(c, step, sched.total_steps, lora_b=True,
                                                      width=g.get("width_factor", 1.0))
    return out


def check_trainer_schedule(optimizer: Any, lr_scheduler: Any, max_steps: int, global_step: int,
                           gradient_accumulation_steps: int = 1) -> None:
    """Refuse a Trainer run whose optimizer has rlrs groups that the plan would not reach:
    a scheduler other than ``RelativeLR`` (it would give every group one LR), or a ``RelativeLR``
    whose length is not the Trainer's optimizer steps (``max_steps``) or whose step is not the
    Trainer's. What :class:`PlanCheck` runs at ``on_train_begin``."""
    if optimizer is None:
        return
    labelled = list(dict.fromkeys(g.get("component", "?") for g in optimizer.param_groups if "components" in g))
    if not labelled:
        return  # not an rlrs optimizer: nothing of the plan to check
    sched = _unwrap_scheduler(lr_scheduler)
    if not isinstance(sched, RelativeLR):
        raise ConfigError(
            f"lr_scheduler: the optimizer's groups come from rlrs.param_groups ({', '.join(labelled)}), but the "
            f"Trainer's scheduler is {type(sched).__name__}, which gives every group one LR (with optimizers=(opt, "
            "None) the Trainer builds its own from lr_scheduler_type); pass the plan's scheduler: "
            "Trainer(optimizers=(opt, rlrs.RelativeLR(opt, plan, max_steps))), or use "
            "rlrs.integrations.hf.RelativeLRTrainer, which builds both"
        )
    if sched.total_steps != max_steps:
        hint = ""
        if gradient_accumulation_steps > 1 and sched.total_steps == max_steps * gradient_accumulation_steps:
            hint = (f" (counted in micro-batches: with gradient_accumulation_steps={gradient_accumulation_steps} the "
                    "Trainer steps the optimizer and the scheduler once per accumulated batch)")
        raise ConfigError(
            f"RelativeLR.total_steps is {sched.total_steps}, but this Trainer run takes {max_steps} optimizer steps"
            f"{hint}: the plan would be applied to a run of another length. Build the scheduler with the Trainer's "
            f"optimizer steps, RelativeLR(opt, plan, {max_steps}): set max_steps in TrainingArguments and pass "
            "the same number (with num_train_epochs it is num_train_epochs × ceil(batches per epoch / "
            "gradient_accumulation_steps)), or use rlrs.integrations.hf.RelativeLRTrainer, which counts it itself"
        )
    if sched.last_epoch != global_step:
        raise ConfigError(
            f"RelativeLR is at step {sched.last_epoch}, but the Trainer starts at step {global_step}: the schedule "
            "would run out of step with the training (a scheduler already used by another train() call, or a "
            "checkpoint without scheduler.pt); build a new RelativeLR for each run, and resume from checkpoints "
            "the Trainer saved with their optimizer and scheduler"
        )


class PlanCheck(transformers.TrainerCallback):
    """Checks, when training begins, that an rlrs plan is what the Trainer will train.

    For a plain ``transformers.Trainer`` built with ``optimizers=(opt, sched)`` from
    ``rlrs.param_groups`` and ``rlrs.RelativeLR``::

        trainer = transformers.Trainer(..., optimizers=(opt, sched), callbacks=[PlanCheck()])

    It raises :class:`~rlrs.config.ConfigError` (see :func:`check_trainer_schedule`) when the
    schedule's ``total_steps`` is not the run's optimizer steps (a length counted in micro-batches
    with gradient accumulation, or a guessed epoch length), when the scheduler is not a
    ``RelativeLR`` (``optimizers=(opt, None)``: the Trainer's own scheduler), or when the
    scheduler's step is not the Trainer's. :class:`RelativeLRTrainer` adds it itself.
    """

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        check_trainer_schedule(optimizer, lr_scheduler, state.max_steps, state.global_step,
                               args.gradient_accumulation_steps)


def _default(args: Any, name: str) -> Any:
    """The default of field ``name`` of the arguments' own dataclass (``TrainingArguments`` or a
    subclass such as TRL's ``SFTConfig``, whose defaults can differ)."""
    for f in dataclasses.fields(type(args)):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


def _replaced_arguments(args: Any, plan: Plan) -> list[str]:
    """The ``TrainingArguments`` set to something the plan does instead, each with the plan field
    to use."""
    out = []
    sched_type = getattr(args, "lr_scheduler_type", None)
    default_type = _default(args, "lr_scheduler_type")
    if sched_type is not None and default_type is not dataclasses.MISSING and \
            str(getattr(sched_type, "value", sched_type)) != str(getattr(default_type, "value", default_type)):
        out.append(f"lr_scheduler_type={getattr(sched_type, 'value', sched_type)!r} (the plan's schedule replaces it: "
                   "each component's shape, e.g. plan.attention.shape = 'cosine', 'linear', 'constant', 'wsd', "
                   "'sgdr', with its λ_start/λ_end and plan.final_fraction)")
    if getattr(args, "lr_scheduler_kwargs", None):
        out.append(f"lr_scheduler_kwargs={args.lr_scheduler_kwargs!r} (the plan's schedule replaces it: "
                   "plan.final_fraction, plan.wsd_decay, plan.sgdr_first, plan.sgdr_mult)")
    for name in ("warmup_steps", "warmup_ratio"):
        value = getattr(args, name, None)
        if value and value != _default(args, name):
            out.append(f"{name}={value!r} (the plan has its own warmup: plan.warmup, a fraction of the optimizer "
                       f"steps, {plan.warmup} in this plan; plan.warmup_from for where it starts)")
    wd = getattr(args, "weight_decay", None)
    if wd is not None and wd != _default(args, "weight_decay"):
        same = not plan.independent_wd and all(plan.weight_decay_of(c) == wd for c in COMPONENTS)
        if not same:  # the plan's own value, restated: nothing is replaced
            out.append(f"weight_decay={wd!r} (the plan gives each component its weight decay: plan.weight_decay, "
                       f"{plan.weight_decay} in this plan, or <component>.weight_decay)")
    return out


class RelativeLRTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` whose optimizer and scheduler follow an rlrs plan.

    ``plan``: a :class:`~rlrs.plan.Plan`, a preset name or a plan file. ``rules``: extra
    ``(regex, component)`` classification rules for the model, as for ``rlrs.param_groups``.
    ``self.plan`` is the plan trained, with the η_base the run uses as its ``base_lr``.
    """

    def __init__(self, *args: Any, plan: Plan | str, rules=None, **kwargs: Any):
        optimizers = kwargs.get("optimizers", (None, None))
        if optimizers is not None and tuple(optimizers) != (None, None):
            raise ConfigError("optimizers: RelativeLRTrainer builds the optimizer and scheduler from the plan; "
                              "leave optimizers unset, or use transformers.Trainer with your own "
                              "(optimizers=(opt, rlrs.RelativeLR(opt, plan, max_steps)) and "
                              "callbacks=[rlrs.integrations.hf.PlanCheck()])")
        self.plan = as_plan(plan)
        self.rules = rules
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None:  # refused before the Trainer sets anything up (None: all defaults)
            self._refuse_replaced(training_args)
        super().__init__(*args, **kwargs)
        self._take_base_lr()
        if not any(isinstance(cb, PlanCheck) for cb in self.callback_handler.callbacks):
            self.add_callback(PlanCheck())

    def _refuse_replaced(self, training_args: Any) -> None:
        # Arguments that set what the plan sets are refused, not warned about: each is an explicit
        # request for a recipe (another schedule, a warmup, a weight decay) that the run would not
        # follow, and a warning is easily lost in the Trainer's output while training_args.bin and
        # the model card record the arguments as if they had run. Defaults are fine: they ask nothing.
        replaced = _replaced_arguments(training_args, self.plan)
        if replaced:
            raise ConfigError(
                "TrainingArguments: RelativeLRTrainer trains the plan's schedule, so these would not be used: "
                + "; ".join(replaced) + ". Leave them at their defaults and set the plan instead "
                "(dataclasses.replace(plan, ...) or a plan file)"
            )

    def _take_base_lr(self) -> None:
        lr = float(self.args.learning_rate)
        default = _default(self.args, "learning_rate")
        if default is not dataclasses.MISSING and lr == float(default):
            # A learning_rate left at the default is not a choice: the plan's η_base is (HF's default
            # would train 40× below paper-dense's). An explicit value equal to the default cannot be
            # told apart from it, so it is read the same way; the log says so.
            logger.warning("learning_rate is %s, the %s default, so it is taken as unset: η_base is the "
                           "plan's base_lr, %s (to train at %s, put base_lr=%s in the plan)",
                           lr, type(self.args).__name__, self.plan.base_lr, lr, lr)
        else:
            # η_base is the learning rate the run was given, as for any Trainer run.
            if lr != self.plan.base_lr:
                logger.info("η_base is TrainingArguments.learning_rate, %s (the plan's base_lr %s is replaced)",
                            lr, self.plan.base_lr)
            self.plan = dataclasses.replace(self.plan, base_lr=lr)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            if getattr(self, "optimizer_cls_and_kwargs", None) is not None:  # the Trainer's own argument
                optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
            else:
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

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # Check the saved schedule before the Trainer loads the optimizer: another plan can have
        # other groups, and torch's group-count error would be all the user saw. The fix named is
        # one the Trainer can take (RelativeLR.load_state_dict's adopt=True is not).
        sched = _unwrap_scheduler(self.lr_scheduler)
        path = os.path.join(checkpoint, SCHEDULER_FILE) if checkpoint is not None else None
        if isinstance(sched, RelativeLR) and path is not None and os.path.isfile(path):
            self._check_resume(torch.load(path, weights_only=True), checkpoint, sched)
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except ConfigError:
            raise
        except ValueError as err:  # torch: the saved optimizer's groups do not fit this one's
            raise ConfigError(
                f"resume_from_checkpoint: {checkpoint}'s optimizer state does not fit this run's optimizer ({err}); "
                "resume with the model, plan and rules the checkpoint was trained with, or start a new run "
                "(a new output_dir, or no resume_from_checkpoint)"
            ) from err

    def _check_resume(self, saved: Any, checkpoint: str, sched: RelativeLR) -> None:
        fix = ("resume with the same plan, learning_rate and max_steps/num_train_epochs (with the same batch size "
               "and gradient_accumulation_steps) as the checkpoint, or start a new run (a new output_dir, or no "
               "resume_from_checkpoint; to start from its weights, load the model from the checkpoint)")
        if not isinstance(saved, dict) or "plan" not in saved or "total_steps" not in saved:
            raise ConfigError(f"resume_from_checkpoint: {checkpoint} was not saved by a RelativeLRTrainer run (its "
                              f"{SCHEDULER_FILE} holds no plan); {fix}")
        try:
            plan = Plan.from_dict(saved["plan"])
        except ConfigError as err:
            raise ConfigError(f"resume_from_checkpoint: {checkpoint}'s plan does not load ({err}); {fix}") from None
        total = int(saved["total_steps"])
        diff = []
        if total != sched.total_steps:
            diff.append(f"{total} optimizer steps in the checkpoint's run, {sched.total_steps} in this one")
        for k, a, b in differences(plan.to_dict(), sched.plan.to_dict()):
            what = " (η_base: learning_rate)" if k == "base_lr" else ""
            diff.append(f"plan.{k} {a!r} in the checkpoint, {b!r} now{what}")
        if diff:
            raise ConfigError(f"resume_from_checkpoint: {checkpoint} is of another schedule ({'; '.join(diff)}), and "
                              f"continuing it with this one would train neither; {fix}")

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        sched = _unwrap_scheduler(self.lr_scheduler)
        if isinstance(sched, RelativeLR) and "loss" in logs:
            # The LRs the last optimizer step used (schedule step last_epoch - 1). The Trainer's own
            # learning_rate is the first group's (the embedding's, 5× in paper-dense): replaced by
            # η_base × the base schedule, the LR every λ is relative to.
            logs.update(logged_lrs(sched, max(0, sched.last_epoch - 1)))
        super().log(logs, *args, **kwargs)
