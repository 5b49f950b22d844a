"""What the experiment commands train: rlrs's reference model or the user's own command.

    >>> from rlrs.targets import CommandTarget, PresetTarget, as_target
    >>> as_target("tiny-moe").spec("paper-moe", seed=0)                     # doctest: +SKIP
    PresetRun(cfg=RunConfig(...))
    >>> CommandTarget("python train.py", steps=200).spec("paper-dense", 1)  # doctest: +SKIP

A target turns (plan, seed, ``--set``s) into a run spec of :mod:`rlrs.engine`; compare, lr-grid,
tune, transfer, ablate and width-transfer take one from the command line (:mod:`rlrs.options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from . import config as _config
from . import presets
from .config import ConfigError
from .engine import CommandRun, PresetRun
from .models import DEFAULT_SIZE, get_size
from .plan import Plan


@dataclass(frozen=True)
class PresetTarget:
    """rlrs's reference model ``preset`` (with an optional run-config file), trained by rlrs."""

    preset: str = DEFAULT_SIZE
    config_file: str | None = None

    @property
    def name(self) -> str:
        return self.preset

    def spec(self, plan: str | Plan, seed: int, sets: Mapping[str, Any] | None = None) -> PresetRun:
        """Seed ``seed`` (``train.seed = train.data_seed = seed``) of ``plan``, with ``sets``."""
        from .train import run_config

        return PresetRun(run_config(self.preset, plan, self.config_file,
                                    {**dict(sets or {}), "train.seed": seed, "train.data_seed": seed}))

    def default_plans(self) -> list[str]:
        """The uniform baseline and the paper's plan for the preset's model type."""
        return list(presets.default_plans(get_size(self.preset).is_moe))

    def components(self) -> list[str]:
        """The components the model has, apart from ``other`` (norms)."""
        moe = get_size(self.preset).is_moe
        return ["embedding", "unembedding", "attention", *(("router", "experts") if moe else ("feedforward",))]


@dataclass(frozen=True)
class CommandTarget:
    """The user's own training command (see :class:`CommandRun` and :mod:`rlrs.script`)."""

    command: str
    steps: int | None = None
    cwd: str = "."

    def __post_init__(self) -> None:
        CommandRun(self.command, Plan(), 0, self.steps, self.cwd)  # the same checks, at once

    @property
    def name(self) -> str:
        return "command"

    def spec(self, plan: str | Plan, seed: int, sets: Mapping[str, Any] | None = None) -> CommandRun:
        """Seed ``seed`` of ``plan``; ``sets`` may only hold ``plan.*`` keys (the script owns the rest)."""
        base = plan if isinstance(plan, Plan) else presets.resolve(plan)
        other = [k for k in (sets or {}) if not k.startswith("plan.")]
        if other:
            raise ConfigError(
                f"{other[0]}: with --command only plan.* settings apply (the script sets its own model, data "
                "and training); pass the rest to your script, e.g. through its own arguments in --command"
            )
        resolved = _config.replace(base, {k[len("plan."):]: v for k, v in (sets or {}).items()})
        return CommandRun(self.command, resolved, seed, self.steps, self.cwd)

    def default_plans(self) -> list[str]:
        """A script's model is taken to be dense (the paper's dense plan); name MoE plans with --plans."""
        return list(presets.default_plans(moe=False))

    def components(self) -> list[str]:
        return ["embedding", "unembedding", "attention", "feedforward"]


Target = PresetTarget | CommandTarget


def as_target(target: "str | Target") -> "Target":
    """A preset name is a :class:`PresetTarget`; targets pass through."""
    return PresetTarget(target) if isinstance(target, str) else target
