"""What a search is: the start run, the searched keys, seeds, factors, pruning (stored in the study)."""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import config as _config
from ..config import ConfigError
from ..engine import CommandRun, PresetRun, RunSpec
from ..targets import CommandTarget
from ..models import DEFAULT_SIZE
from ..plan import Plan
from ..search import FACTORS

DEFAULT_STEPS = 300
_MOE_COMPONENTS = ("embedding", "unembedding", "attention", "router", "experts")
_DENSE_COMPONENTS = ("embedding", "unembedding", "attention", "feedforward")


def default_params(base: RunSpec) -> list[str]:
    """The dotted keys algorithm 2 tunes for the start run ``base``: η_base, λ_start and λ_end of
    each component present, then (preset runs) weight decay and init scale. ``end`` is left out
    for a ``constant``-shaped component (it must stay 1); with tied embeddings only the component
    the tensor follows is kept. A command's model is unknown to rlrs: its default is the dense
    components and weight decay (name MoE components with ``--params``)."""
    plan = base.plan
    if isinstance(base, CommandRun):
        comps = list(_DENSE_COMPONENTS)
    else:
        cfg = base.cfg
        comps = list(_MOE_COMPONENTS if cfg.model.is_moe else _DENSE_COMPONENTS)
        if cfg.model.tie_embeddings and plan.tied:
            comps.remove("unembedding" if plan.tied == "embedding" else "embedding")
    keys = ["plan.base_lr"]
    for c in comps:
        keys.append(f"plan.{c}.start")
        if plan.component(c).shape != "constant":
            keys.append(f"plan.{c}.end")
    return keys + ["plan.weight_decay"] + (["model.init_scale"] if isinstance(base, PresetRun) else [])


def _get(tree: Mapping[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


@dataclass(frozen=True)
class Pruning:
    """Early stopping: at each fraction of training in ``rungs`` a candidate whose mean eval loss
    exceeds the current best point's at the same step by more than ``margin`` (relative) stops."""

    rungs: tuple[float, ...] = (0.25, 0.5)
    margin: float = 0.02

    def __post_init__(self) -> None:
        if not self.rungs or any(not (0 < r < 1) for r in self.rungs):
            raise ConfigError(f"prune_at: fractions of training in (0, 1), got {list(self.rungs)}; e.g. 0.25,0.5")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"prune_margin: a relative margin >= 0, got {self.margin}; e.g. 0.02")


@dataclass(frozen=True)
class TuneSpec:
    """Everything that defines a search. It is stored in the study: workers read it from there, and
    a rerun with other settings is refused instead of mixing two searches in one study.

    ``base`` is seed 0 of the start point: a preset run (its resolved run config) or a run of the
    user's command (then only ``plan.*`` keys can be searched)."""

    base: RunSpec
    params: tuple[str, ...]
    seeds: int = 1
    search_seed: int = 0
    factors: tuple[float, ...] = FACTORS
    prune: Pruning | None = None
    objective: str | None = None  # "module:function": a synthetic loss instead of training
    min_improvement: float = 0.0  # relative gain a move needs (0: any, as algorithm 2)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_improvement) and 0 <= self.min_improvement < 1):
            raise ConfigError(f"min_improvement: a relative margin in [0, 1), got {self.min_improvement}; e.g. 0.002")
        if self.seeds < 1:
            raise ConfigError(f"seeds: at least 1, got {self.seeds}")
        if not self.params:
            raise ConfigError("params: nothing to search; name at least one dotted key, e.g. plan.base_lr")
        if isinstance(self.base, CommandRun):
            other = [k for k in self.params if not k.startswith("plan.")]
            if other:
                raise ConfigError(f"params: {other[0]} is not a plan key; with --command the script owns its model "
                                  "and training settings, so only plan.* keys can be searched")
            if self.prune is not None and self.base.steps is None and self.objective is None:
                raise ConfigError("--prune with --command needs --steps N: the rungs are fractions of the run's length")
        tree = self._tree()
        for key in self.params:
            try:
                value = _get(tree, key)
            except (KeyError, TypeError):
                try:
                    self.run_spec({key: 0.0})
                except ConfigError as err:  # names the closest valid key
                    raise ConfigError(f"params: {err}") from None
                raise ConfigError(f"params: {key!r} is not a setting") from None
            if isinstance(value, bool) or not isinstance(value, float):
                raise ConfigError(
                    f"params: {key} is {value!r}, not a float setting; the search multiplies values, "
                    "so search only float settings (see `rlrs tune --help` for the default list)"
                )
        if self.objective is not None:
            load_function(self.objective)

    @property
    def config(self):
        """The start point's run config (preset runs only)."""
        return self.base.cfg if isinstance(self.base, PresetRun) else None

    @property
    def name(self) -> str:
        return self.base.cfg.preset if isinstance(self.base, PresetRun) else "command"

    def _tree(self) -> dict[str, Any]:
        if isinstance(self.base, PresetRun):
            return self.base.cfg.to_dict()
        return {"plan": self.base.plan.to_dict()}

    @classmethod
    def create(
        cls,
        preset: str = DEFAULT_SIZE,
        plan: str | Plan | None = None,
        sets: Mapping[str, Any] | None = None,
        config_file: str | Path | None = None,
        steps: int | None = DEFAULT_STEPS,
        params: Sequence[str] | None = None,
        seeds: int = seeds,  # the defaults of seeds, search_seed, min_improvement: the fields' above
        search_seed: int = search_seed,
        prune: Pruning | None = None,
        objective: str | None = None,
        min_improvement: float = min_improvement,
    ) -> "TuneSpec":
        """Resolve the start config like ``rlrs train`` (``steps`` first, ``sets`` win over it)."""
        from ..train import run_config

        sets = {**({"train.steps": steps} if steps is not None else {}), **(sets or {})}
        base = PresetRun(run_config(preset, plan, config_file, sets))
        return cls(base, tuple(params or default_params(base)), seeds, search_seed, tuple(FACTORS), prune, objective,
                   min_improvement)

    @classmethod
    def for_command(
        cls,
        command: str,
        plan: str | Plan | None = None,
        sets: Mapping[str, Any] | None = None,
        steps: int | None = None,
        cwd: str = ".",
        params: Sequence[str] | None = None,
        seeds: int = seeds,
        search_seed: int = search_seed,
        prune: Pruning | None = None,
        min_improvement: float = min_improvement,
    ) -> "TuneSpec":
        """A search over the plan of the user's own command (``rlrs tune --command``)."""
        target = CommandTarget(command, steps, cwd)
        base = target.spec(plan or target.default_plans()[1], 0, sets)
        return cls(base, tuple(params or default_params(base)), seeds, search_seed, tuple(FACTORS), prune, None,
                   min_improvement)

    def start(self) -> list[tuple[str, float]]:
        tree = self._tree()
        return [(k, _get(tree, k)) for k in self.params]

    def run_spec(self, point: Mapping[str, float], seed_index: int = 0) -> RunSpec:
        """The run of seed ``seed_index`` of ``point`` (strictly validated)."""
        if isinstance(self.base, CommandRun):
            b = self.base
            plan = _config.replace(b.plan, {k[len("plan."):]: v for k, v in point.items()})
            return CommandRun(b.command, plan, b.seed + seed_index, b.steps, b.cwd)
        t = self.base.cfg.train
        return PresetRun(_config.replace(
            self.base.cfg, {**point, "train.seed": t.seed + seed_index, "train.data_seed": t.data_seed + seed_index}))

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self.base, CommandRun):
            b = self.base
            base = {"command": {"command": b.command, "plan": b.plan.to_dict(), "seed": b.seed, "steps": b.steps,
                                "cwd": str(Path(b.cwd).resolve())}}
        else:
            base = {"config": self.base.cfg.to_dict()}
        return {
            **base,
            "params": list(self.params),
            "seeds": self.seeds,
            "search_seed": self.search_seed,
            "factors": list(self.factors),
            "prune": None if self.prune is None else {"rungs": list(self.prune.rungs), "margin": self.prune.margin},
            "objective": self.objective,
            "min_improvement": self.min_improvement,
        }

    def differences(self, stored: Mapping[str, Any]) -> list[str]:
        """Dotted keys where the search stored in a study (``stored``, a :meth:`to_dict`) differs
        from this one. ``stored`` is read back first, so settings added to rlrs since the study
        began compare at their defaults instead of as differences."""
        mine = json.loads(json.dumps(self.to_dict()))
        theirs = json.loads(json.dumps(TuneSpec.from_dict(stored).to_dict()))
        return [k for k, _, _ in _config.differences(theirs, mine)]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TuneSpec":
        """The spec :meth:`to_dict` wrote (a study's, ``search.json``'s ``spec``), strictly: an
        unknown key names the closest valid one, a key added since takes its field's default. Its
        ``base`` is written under one of two keys, ``config`` (a model size's run config) or
        ``command`` (the user's command), so it is read here; the rest by ``rlrs.config.from_dict``."""
        from ..train import RunConfig

        if not isinstance(d, Mapping):
            raise ConfigError(f"spec: expected a table, got {d!r}")
        kinds = [k for k in ("command", "config") if k in d]
        if len(kinds) != 1:
            raise ConfigError("spec: give exactly one of command (a command's run) and config (a model size's run "
                              f"config), got {kinds or 'neither'}")
        if kinds == ["command"]:
            base: RunSpec = _config.from_dict(CommandRun, d["command"], "spec.command")
        else:
            base = PresetRun(RunConfig.from_dict(d["config"]))
        rest = {k: v for k, v in d.items() if k != kinds[0]}
        if "base" in rest:
            raise ConfigError("spec.base: unknown key; the run is written under command or config")
        return _config.from_dict(cls, {**rest, "base": base}, "spec")


def load_function(spec: str) -> Callable:
    """``"module:function"`` → the function (a synthetic objective)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ConfigError(f"objective: {spec!r} is not MODULE:FUNCTION, e.g. mypkg.losses:quadratic")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"objective: cannot load {spec!r} ({err}); put its module on PYTHONPATH") from None
    if not callable(fn):
        raise ConfigError(f"objective: {spec!r} is not callable")
    return fn
