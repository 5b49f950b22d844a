"""Torch integration: param groups for any optimizer, and the closed-form scheduler.

Three lines in your own training loop::

    groups = rlrs.param_groups(model, plan)                 # one group per component (and decay)
    opt = torch.optim.AdamW(groups)                         # any torch.optim optimizer
    sched = rlrs.RelativeLR(opt, plan, total_steps)          # call sched.step() after opt.step()

Groups carry ``"component"`` (``"router"``; merged groups ``"attention+feedforward"``) and
``"components"`` (the tuple of component names), so logs can say ``lr/router``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from .components import COMPONENTS, DEFAULT_TIED, Rule, classify, tied_parameters
from .config import ConfigError, closest, differences
from . import presets
from .plan import Plan
from .runlog import RunLog, TrainRecord
from .script import _rank, run_dir


def as_plan(plan: Plan | str) -> Plan:
    """A :class:`Plan`, a preset name (``"paper-dense"``) or a ``.toml``/``.json`` plan file."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, (str, os.PathLike)):
        return presets.resolve(str(plan))
    raise ConfigError(f"plan: expected a Plan, a named plan or a plan file, got {type(plan).__name__}")


def assign_components(
    model: nn.Module, plan: Plan | str, rules: Sequence[Rule] | None = None
) -> dict[str, str]:
    """Each trainable parameter (by its first name) to the component whose schedule it follows.

    A tensor shared by the embedding and the unembedding (tied weights) follows ``plan.tied``,
    or ``DEFAULT_TIED`` (``"embedding"``, measured: see :data:`rlrs.components.DEFAULT_TIED`) when
    the plan leaves it unset. A tensor shared by
    any other pair of components raises, naming the rule that settles it: picking one silently
    would change what the plan means.
    """
    plan = as_plan(plan)
    by_name = classify(model, rules, tied=None)  # each alias by its own module: other shared pairs must raise
    alias_of = {}
    for group in tied_parameters(model):
        for name in group:
            alias_of[name] = group
    out: dict[str, str] = {}
    for name, p in model.named_parameters():  # first name of each tensor
        if not p.requires_grad:
            continue
        names = alias_of.get(name, (name,))
        comps = sorted({by_name[n] for n in names}, key=COMPONENTS.index)
        if len(comps) == 1:
            out[name] = comps[0]
            continue
        if set(comps) == {"embedding", "unembedding"}:
            out[name] = plan.tied or DEFAULT_TIED
            continue
        detail = ", ".join(f"{n} ({by_name[n]})" for n in names)
        rule = (f"^{re.escape(names[-1])}$", by_name[names[0]])
        raise ConfigError(
            f"one tensor is shared by {detail}; it can follow only one schedule, so give all its names one "
            f"component with a rule, e.g. rlrs.param_groups(model, plan, rules=[(r\"{rule[0]}\", \"{rule[1]}\")])"
        )
    return out


def param_groups(
    model: nn.Module,
    plan: Plan | str,
    rules: Sequence[Rule] | None = None,
    *,
    merge: bool = True,
    tensor_lr: bool = False,
    width_factors: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Param groups for ``torch.optim`` optimizers, one per (component, decayed or not).

    Args:
        model: any ``nn.Module``; parameters are classified by :func:`rlrs.components.classify`.
        plan: the :class:`~rlrs.plan.Plan` giving each component's schedule and weight decay,
            or a preset name (``"paper-dense"``) or plan file.
        rules: extra ``(regex, component)`` rules, checked before the built-in ones.
        merge: merge groups whose schedule and weight decay are identical (fewer groups means
            fewer foreach/fused kernel launches); the merged group lists all its components.
        tensor_lr: hold each group's LR in a 0-dim tensor (needed for ``fused=True`` or
            ``capturable=True`` optimizers and for ``torch.compile`` without recompiles).
        width_factors: a parametrization's LR factor per component (muP:
            :func:`rlrs.models.width_factors`); a group carries its factor as ``width_factor``
            and :class:`RelativeLR` passes it to ``Plan.lr``. Unlisted components: 1.

    Each group has ``params``, ``lr`` (η_base; :class:`RelativeLR` sets the scheduled value),
    ``weight_decay``, ``component``, ``components`` and ``decay`` (whether it is weight-decayed:
    tensors with ``ndim < 2`` are not, unless ``plan.decay_1d``). Where a plan factor reads a
    tensor's context (:class:`~rlrs.factors.TensorContext`), groups tell it apart: with
    :class:`~rlrs.factors.LoraPlus`, PEFT's LoRA B matrices get groups of their own with
    ``lora_b: True`` (their LR is the ratio times the component's); with
    :class:`~rlrs.factors.DepthDecay`, each layer gets its own with ``depth``. LoRA adapters take
    the component of the module they adapt, and the frozen base weights are left out, like every
    frozen parameter.
    """
    plan = as_plan(plan)
    # A probe of `rlrs auto` measures each component's update size, so it needs one component per
    # group; every tensor's LR is the same either way.
    merge = merge and measure_every() is None
    comp_of = assign_components(model, plan, rules)
    depth_of = layer_depths(model, _readers(plan, "depth")) if plan.reads("depth") else {}
    widths = dict(width_factors or {})
    for comp, f in widths.items():
        if comp not in COMPONENTS:
            raise ConfigError(f"width_factors: {comp!r} is not a component; {closest(comp, COMPONENTS)}")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (math.isfinite(f) and f > 0):
            raise ConfigError(f"width_factors: {comp}'s factor must be a number > 0, got {f!r}")
    buckets: dict[tuple, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if name not in comp_of:
            continue
        comp = comp_of[name]
        decay = plan.decay_1d or p.ndim >= 2
        wd = plan.weight_decay_of(comp) if decay else 0.0
        c = plan.component(comp)
        lora_b = plan.reads("lora_b") and bool(_LORA_B.search(name))
        # Components with the same schedule and decay can share a group: same LR every step.
        width = float(widths.get(comp, 1.0))
        depth = depth_of.get(name, 0)
        key = (c.start, c.end, c.shape, wd, decay, lora_b, width, depth) if merge else (comp, decay, lora_b, depth)
        bucket = buckets.setdefault(key, {"params": [], "components": [], "weight_decay": wd, "width_factor": width,
                                          "depth": depth})
        bucket["decay"] = decay
        bucket["lora_b"] = lora_b
        bucket["params"].append(p)
        if comp not in bucket["components"]:
            bucket["components"].append(comp)
    groups = []
    for b in buckets.values():
        comps = tuple(sorted(b["components"], key=COMPONENTS.index))
        lr = torch.tensor(plan.base_lr, dtype=torch.float64) if tensor_lr else plan.base_lr
        groups.append(
            {
                "params": b["params"],
                "lr": lr,
                "weight_decay": b["weight_decay"],
                "component": "+".join(comps) + ("/lora_B" if b["lora_b"] else ""),
                "components": comps,
                "decay": b["decay"],
                **({"lora_b": True} if b["lora_b"] else {}),
                **({"width_factor": b["width_factor"]} if b["width_factor"] != 1.0 else {}),
                **({"depth": b["depth"]} if b["depth"] else {}),
            }
        )
    if not groups:
        raise ConfigError(
            f"model: {type(model).__name__} has no trainable parameter (every one has requires_grad=False); "
            "unfreeze what should train before building the optimizer"
        )
    groups.sort(key=lambda g: (COMPONENTS.index(g["components"][0]), not g["decay"], g.get("lora_b", False),
                               g.get("depth", 0)))
    return groups


LAYER_PATTERN = re.compile(r"(?:^|\.)(?:layers|blocks|block|layer|h)\.(\d+)\.")
"""A numbered Transformer layer in a parameter's name (``blocks.3.``): group 1 is its index."""


def _readers(plan: Plan, field_name: str) -> str:
    """The plan-file keys of the factors that read ``field_name`` (for error messages)."""
    return ", ".join(f"plan.{f.key or type(f).__name__}" for f in plan.factors if field_name in getattr(f, "reads", ()))


def layer_depths(model: nn.Module, what: str = "plan.depth_decay") -> dict[str, int]:
    """How many Transformer layers lie above each parameter: ``L − 1 − l`` inside layer ``l`` of
    ``L`` (found by name: ``layers.N.``, ``blocks.N.``, ``h.N.``, ...); ``L`` for parameters
    before the first layer (the embedding), 0 after the last (final norm, head).

        >>> from rlrs.models import build_model, get_size
        >>> d = layer_depths(build_model(get_size("tiny-dense")))   # 2 layers
        >>> d["embed.weight"], d["blocks.0.attn.qkv.weight"], d["blocks.1.mlp.up.weight"], d["unembed.weight"]
        (2, 1, 0, 0)
    """
    layer, n_layers = layer_numbers(model, what, f"unset {what.removeprefix('plan.')} for this model")
    return {n: n_layers - 1 - l for n, l in layer.items()}


def layer_numbers(model: nn.Module, what: str, fix: str) -> tuple[dict[str, int], int]:
    """Each parameter's Transformer layer ``l`` (by name, see :data:`LAYER_PATTERN`) and the
    number of layers ``L``: parameters before the first layer get ``−1``, after the last ``L − 1``.
    ``what`` and ``fix`` word the error for a model without numbered layers."""
    names = [n for n, _ in model.named_parameters()]
    layer = {n: int(m.group(1)) for n in names if (m := LAYER_PATTERN.search(n))}
    if not layer:
        raise ConfigError(f"{what}: {type(model).__name__} has no numbered layers (layers.N, blocks.N, h.N) "
                          f"to count depth by; {fix}")
    n_layers = max(layer.values()) + 1
    first = min(i for i, n in enumerate(names) if n in layer)
    return {n: layer.get(n, -1 if i < first else n_layers - 1) for i, n in enumerate(names)}, n_layers


# PEFT names LoRA's up-projection "lora_B" (and "lora_embedding_B" for embeddings): LoRA+ speeds it up.
_LORA_B = re.compile(r"(^|\.)lora_(embedding_)?B(\.|$)")


def _set(group: dict, key: str, value: float) -> None:
    # Tensor hyperparameters are updated in place so compiled/captured graphs see the new value.
    if isinstance(group[key], torch.Tensor):
        group[key].fill_(value)
    else:
        group[key] = value


class RelativeLR(LRScheduler):
    """Sets every param group's LR to ``plan.lr(component, step, total_steps)``, in closed form.

    Use with groups from :func:`param_groups`. The LR of step ``t`` depends on ``t`` alone, so a
    resumed run continues with exactly the same LRs; ``state_dict()`` holds only plain data (the
    plan as a dict, the step) and loads through ``torch.load(weights_only=True)``.

    With ``plan.independent_wd`` it also sets each decayed group's ``weight_decay`` so that the
    optimizer's decoupled decay ``p ← p·(1 − lr·wd)`` shrinks by ``plan wd · shape(t)`` per step
    (AdamW, or Adam with ``decoupled_weight_decay=True``).

        sched = RelativeLR(opt, plan, total_steps=10_000)
        for step in range(10_000):
            ...; opt.step(); sched.step()

    **The plan must reach the optimizer.** At each ``step()`` it checks that every group's ``lr``
    (and ``weight_decay``) is still what it set at its previous step, and raises
    :class:`~rlrs.config.ConfigError` naming the group when something else wrote it: a script's own
    LR loop (nanoGPT's ``for g in opt.param_groups: g["lr"] = lr``), another scheduler (a
    ``ChainedScheduler``/``SequentialLR`` around this one, whose factors would be lost: this one
    sets each LR in closed form), or a trainer's own scheduler. Without the check such a run trains
    a different schedule than its plan says, silently. ``allow_overrides=True`` turns it off, for
    code that deliberately rescales the LRs after each ``sched.step()``.

    Under ``rlrs auto``'s update-size probe (``$RLRS_MEASURE_UPDATES``) it also reports each
    component's ‖ΔW‖/‖W‖ into the run's log (:class:`UpdateProbe`); otherwise it does nothing more.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, plan: Plan | str, total_steps: int, last_epoch: int = -1,
                 *, allow_overrides: bool = False):
        plan = as_plan(plan)
        _check_optimizer(optimizer)
        for i, g in enumerate(optimizer.param_groups):
            if "components" not in g:
                raise ConfigError(
                    f"optimizer.param_groups[{i}] has no 'components': build the optimizer from "
                    "rlrs.param_groups(model, plan)"
                )
            for comp in g["components"]:
                plan.schedule(comp, total_steps)  # fail now on an impossible plan, not mid-run
        if plan.independent_wd and not _decoupled_decay(optimizer):
            raise ConfigError(
                "plan.independent_wd: needs an optimizer with decoupled weight decay "
                f"(torch.optim.AdamW, or Adam(decoupled_weight_decay=True)); got {type(optimizer).__name__}"
            )
        self.plan = plan
        self.total_steps = total_steps
        self.allow_overrides = allow_overrides
        self._written: list[tuple[float, float]] | None = None  # (lr, weight_decay) per group after our last write
        every = measure_every()
        self._probe = UpdateProbe(optimizer, every) if every is not None else None  # before the initial step()
        super().__init__(optimizer, last_epoch)

    def step(self, epoch=None) -> None:
        super().step(epoch)
        if self._probe is not None:
            self._probe.after_step(self.last_epoch, self.lrs_by_component)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        self._check_groups()
        return [self.plan.lr(g["components"][0], step, self.total_steps, g.get("lora_b", False), g.get("width_factor", 1.0),
                             g.get("depth", 0))
                for g in self.optimizer.param_groups]

    def _check_groups(self) -> None:
        for i, g in enumerate(self.optimizer.param_groups):
            if "components" not in g:
                raise ConfigError(
                    f"optimizer.param_groups[{i}] has no 'components' (added with add_param_group after "
                    "RelativeLR was built?): give every group a component, e.g. "
                    "opt.add_param_group({'params': [...], 'components': ('other',)}), or build the "
                    "optimizer from rlrs.param_groups(model, plan)"
                )

    _get_closed_form_lr = get_lr

    def _update_lr(self, epoch=None) -> None:
        # torch's step() ends here, and so does SequentialLR's switch to this scheduler at its
        # milestone (it calls _update_lr directly): one place for the check and the write.
        self._check_written()
        super()._update_lr(epoch)
        if self.plan.independent_wd:
            self._set_independent_wd()
        self._remember_written()

    def _remember_written(self) -> None:
        # What the groups hold right after our write, read back (a float32 tensor LR rounds).
        self._written = [(_value(g["lr"]), _value(g.get("weight_decay", 0.0))) for g in self.optimizer.param_groups]

    def _check_written(self) -> None:
        if self.allow_overrides or self._written is None:
            return
        groups = self.optimizer.param_groups
        if len(groups) != len(self._written):
            return  # a group added since: _check_groups names it
        for i, (g, (lr, wd)) in enumerate(zip(groups, self._written)):
            for key, was in (("lr", lr), ("weight_decay", wd)):
                now = _value(g.get(key, 0.0))
                if not _same(now, was):
                    raise ConfigError(
                        f"optimizer.param_groups[{i}] ({g.get('component', '?')}): its {key} is {now:.6g}, but "
                        f"RelativeLR set {was:.6g} at step {self.last_epoch}: something else wrote it, so the "
                        "plan is not what trains. Usual causes: the script's own LR code (a loop setting "
                        "g['lr'] for every group; remove it: RelativeLR sets every group's LR each step), "
                        "another scheduler on this optimizer (ChainedScheduler, SequentialLR, a trainer's "
                        "scheduler; put the warmup and decay into the plan instead: plan.warmup, "
                        "component shapes), or code changing weight decay (set it in the plan). If code "
                        "after sched.step() rescales the LRs on purpose, pass RelativeLR(..., "
                        "allow_overrides=True)"
                    )

    def _set_independent_wd(self) -> None:
        step = self.last_epoch
        for g in self.optimizer.param_groups:
            if not g.get("decay", True):
                continue
            comp = g["components"][0]
            lr = self.plan.lr(comp, step, self.total_steps, g.get("lora_b", False), g.get("width_factor", 1.0),
                              g.get("depth", 0))
            per_step = self.plan.weight_decay_of(comp) * self.plan.decay_shape(comp, step, self.total_steps)
            _set(g, "weight_decay", per_step / lr if lr > 0 else 0.0)

    def lrs_by_component(self, step: int | None = None) -> dict[str, float]:
        """Every component's LR at ``step`` (default: the current step), for logs: ``lr/router``."""
        step = self.last_epoch if step is None else step
        return {c: self.plan.lr(c, step, self.total_steps, width=g.get("width_factor", 1.0))
                for g in self.optimizer.param_groups for c in g["components"]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "total_steps": self.total_steps,
            "plan": self.plan.to_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any], adopt: bool = False) -> None:
        """Restore the step, then set every group's LR for that step.

        The state must come from a scheduler with this plan and length: resuming with other ones
        would silently train a different schedule, so that is refused naming what differs, unless
        ``adopt=True`` (then the saved plan and length replace this scheduler's).
        """
        keys = ("plan", "total_steps", "last_epoch", "_step_count")
        if not isinstance(state_dict, Mapping) or any(k not in state_dict for k in keys):
            found = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ConfigError(f"RelativeLR.load_state_dict: not a RelativeLR state (needs {', '.join(keys)}; "
                              f"got {found}); give it what RelativeLR.state_dict() returned")
        plan = Plan.from_dict(state_dict["plan"])
        total = int(state_dict["total_steps"])
        if not adopt and (plan != self.plan or total != self.total_steps):
            diff = [f"total_steps {total} (saved) vs {self.total_steps} (now)"] if total != self.total_steps else []
            diff += [f"plan.{k}" for k, _, _ in differences(plan.to_dict(), self.plan.to_dict())]
            raise ConfigError(
                f"RelativeLR.load_state_dict: the saved state is of another schedule ({', '.join(diff)}); "
                "build the scheduler with the saved plan and length, or pass adopt=True to take them over "
                "(under transformers.Trainer, which cannot pass adopt: resume with the checkpoint's plan and "
                "max_steps, or start a new output_dir)"
            )
        self.plan, self.total_steps = plan, total
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict["_step_count"])
        values = self.get_lr()
        for g, lr in zip(self.optimizer.param_groups, values, strict=True):
            _set(g, "lr", lr)
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]
        if self.plan.independent_wd:
            self._set_independent_wd()
        self._remember_written()


MEASURE_ENV = "RLRS_MEASURE_UPDATES"
"""Set by ``rlrs auto``'s update-size probe to ``k``: every :class:`RelativeLR` then measures each
component's relative update ‖ΔW‖/‖W‖ every ``k`` steps and reports it into the run's log."""


def measure_every() -> int | None:
    """``k`` from ``$RLRS_MEASURE_UPDATES`` inside an rlrs run (``$RLRS_RUN_DIR`` set), else ``None``."""
    text = os.environ.get(MEASURE_ENV)
    if not text or not os.environ.get("RLRS_RUN_DIR"):
        return None
    try:
        every = int(text)
    except ValueError:
        raise ConfigError(f"${MEASURE_ENV}={text!r}: the steps between update measurements, an integer >= 1") from None
    if every < 1:
        raise ConfigError(f"${MEASURE_ENV}={text!r}: the steps between update measurements, an integer >= 1")
    return every


class UpdateProbe:
    """Per-component ‖ΔW‖/‖W‖ (Frobenius over the component, as the trainer's ``update_ratio/*``)
    of the optimizer step after every ``every``-th one: :class:`RelativeLR` copies the weights
    after step ``t`` (``t % every == 0``) and compares at ``t + 1``, writing a train record with
    ``update_ratio/<component>`` and ``update_rms/<component>`` through :mod:`rlrs.script`'s log
    (rank 0 only; under FSDP it measures rank 0's shard). Costs nothing unless ``rlrs auto`` asks."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int):
        self.optimizer, self.every = optimizer, every
        self._before: tuple[int, dict[str, list[torch.Tensor]]] | None = None

    def _params(self) -> dict[str, list[torch.Tensor]]:
        out: dict[str, list[torch.Tensor]] = {}
        for g in self.optimizer.param_groups:
            if len(g["components"]) == 1:  # groups are per component under a probe (param_groups)
                out.setdefault(g["components"][0], []).extend(g["params"])
        return out

    @torch.no_grad()
    def after_step(self, step: int, lrs) -> None:
        if self._before is not None and self._before[0] == step - 1:
            metrics = {}
            for c, ps in self._params().items():
                before = self._before[1].get(c)
                if before is None or len(before) != len(ps):
                    continue
                du = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(ps, before))
                w = sum(float(b.float().pow(2).sum()) for b in before)
                n = sum(b.numel() for b in before)
                metrics[f"update_rms/{c}"] = math.sqrt(du / n) if n else float("nan")
                metrics[f"update_ratio/{c}"] = math.sqrt(du / w) if w > 0 else float("nan")
            out = run_dir()
            if out is not None and _rank() == 0 and metrics:
                with RunLog(out) as log:
                    log.append(TrainRecord(step, lr=lrs(step - 1), metrics=metrics))
        self._before = None
        if step % self.every == 0:
            self._before = (step, {c: [p.detach().clone() for p in ps] for c, ps in self._params().items()})


def _value(x: Any) -> Any:
    # A hyperparameter as a float to compare; a tensor on an accelerator stays the tensor (compared
    # by identity: reading it would wait for the device at every step).
    if isinstance(x, torch.Tensor) and x.device.type != "cpu":
        return x
    return float(x)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    # A different tensor object (Optimizer.load_state_dict replaces the groups) is read, which
    # waits for the device only then.
    a, b = float(a), float(b)
    return a == b or (math.isnan(a) and math.isnan(b))


def _check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Refuse optimizers on which a schedule would silently do nothing, or fail at the first step."""
    name = type(optimizer).__name__
    if "ScheduleFree" in name:
        raise ConfigError(
            f"optimizer: {name} is schedule-free: it replaces the LR schedule, so RelativeLR would fight it; "
            "use a regular optimizer (torch.optim.AdamW) with RelativeLR, or the schedule-free one alone"
        )
    for i, g in enumerate(optimizer.param_groups):
        if g.get("relative_step"):
            raise ConfigError(
                f"optimizer: {name} with relative_step=True sets its own step size and ignores lr "
                f"(param_groups[{i}]), so the plan would change nothing; use "
                f"{name}(params, lr=plan.base_lr, relative_step=False, scale_parameter=False, warmup_init=False)"
            )
        lr = g.get("lr")
        if isinstance(lr, torch.Tensor) and not g.get("fused") and not g.get("capturable"):
            on_cuda = any(p.is_cuda for p in g["params"])
            if g.get("foreach") or (g.get("foreach") is None and on_cuda):
                raise ConfigError(
                    f"optimizer: {name} would run its foreach path with a tensor LR (param_groups(..., "
                    "tensor_lr=True)), which torch refuses at the first step; pass fused=True or "
                    "capturable=True (or foreach=False), or build the groups with tensor_lr=False"
                )


def muon_split(groups: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split :func:`param_groups` into groups for Muon (the 2-D matrices of attention and
    feed-forward) and groups for AdamW (embeddings, the head, routers, experts' 3-D tensors,
    norms and biases). Every group keeps its component, so one plan drives both optimizers::

        muon, adamw = rlrs.muon_split(rlrs.param_groups(model, plan, merge=False))
        opts = [torch.optim.Muon(muon, adjust_lr_fn="match_rms_adamw"), torch.optim.AdamW(adamw)]
        scheds = [rlrs.RelativeLR(o, plan, total_steps) for o in opts]

    ``adjust_lr_fn="match_rms_adamw"`` scales Muon's update to AdamW's size, so one η_base serves both.
    ``merge=False`` keeps each component in groups of its own: a merged group (components with one
    schedule, as in a uniform plan) cannot tell its hidden matrices from the rest, and is refused.
    """
    muon, adamw = [], []
    for g in groups:
        hidden = set(g["components"]) <= {"attention", "feedforward"}
        if not hidden and set(g["components"]) & {"attention", "feedforward"}:
            # A merged group (identical schedules, e.g. a uniform plan) holds hidden matrices and
            # embeddings alike; sending it all to AdamW would silently train no tensor with Muon.
            raise ValueError(f"muon_split: one param group holds {sorted(g['components'])}, so its hidden "
                             "matrices cannot be told apart; build the groups with "
                             "rlrs.param_groups(model, plan, merge=False)")
        matrices = [p for p in g["params"] if hidden and p.ndim == 2]
        rest = [p for p in g["params"] if not (hidden and p.ndim == 2)]
        for params, into in ((matrices, muon), (rest, adamw)):
            if params:
                into.append({**g, "params": params})
    return muon, adamw


def _decoupled_decay(optimizer: torch.optim.Optimizer) -> bool:
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    return all(g.get("decoupled_weight_decay", False) for g in optimizer.param_groups)

