"""The one training loop: every rlrs command (train, demo, compare, tune, benchmarks) uses it.

    >>> from rlrs.train import run_config, Trainer
    >>> cfg = run_config("tiny-moe", plan="paper-moe", sets={"train.steps": 50})
    >>> result = Trainer(cfg, out="runs/tiny").run()          # doctest: +SKIP
    >>> result.final_eval_loss                                   # doctest: +SKIP

A run directory holds ``config.json`` (the resolved run config: ``rlrs train --config`` takes it
back), ``plan.toml``, ``metrics.jsonl`` (one JSON record per step and per evaluation),
``checkpoints/step_XXXXXXX.pt`` and, once finished, ``summary.json``.

Steps: ``step`` in the logs counts completed optimizer steps. The batch of step ``t`` depends only
on ``(data_seed, t)``, so two runs with the same data seed see the same data whatever their plan.
The evaluation (a fixed set of held-out batches) runs at step 0, every ``eval_interval`` of training
(1% by default: the paper's measuring points) and at the end.

One module (about 900 lines) on purpose: the run config, the loop and its checkpoints are one
contract. A resume must restore exactly what the loop saves and the config says, and a split would
spread the checkpoint format over files that must change together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from . import config as _config
from . import files
from . import data as _data
from . import models as _models
from . import presets as _presets
from .components import COMPONENTS
from .config import ConfigError
from .optim import RelativeLR, assign_components, param_groups
from .outcome import RunResult, status_of
from .factors import WidthWarmup
from .plan import Plan
from .runlog import Diverged, EvalRecord, EventRecord, Record, RunLog, TrainRecord, read_log, rewrite

NONFINITE_POLICIES = ("abort", "skip")
# A run that skipped more than this share of its steps (train.nonfinite = "skip") did not really
# train: it ends "unstable", not "finished", and stays out of comparisons.
UNSTABLE_SKIP_SHARE = 0.5
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train. ``steps=None`` derives the length from the token budget:
    ``tokens_per_param`` × active non-embedding parameters (20: compute-optimal, as the paper)."""

    steps: int | None = None
    tokens_per_param: float = 20.0
    batch_size: int = 16
    seq_len: int | None = None
    eval_interval: float = 0.01
    eval_batches: int = 8
    grad_clip: float | None = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    nonfinite: str = "abort"
    seed: int = 0
    data_seed: int = 0
    checkpoint_interval: float = 0.1
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    threads: int | None = None
    tensorboard: bool = False
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 2:
            raise ConfigError(f"steps: at least 2, got {self.steps}; or leave it unset to use tokens_per_param")
        if not (self.tokens_per_param > 0 and math.isfinite(self.tokens_per_param)):
            raise ConfigError(f"tokens_per_param: must be > 0, got {self.tokens_per_param}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: at least 1, got {self.batch_size}")
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"seq_len: at least 1, got {self.seq_len}; or unset for the model's")
        for name in ("eval_interval", "checkpoint_interval"):
            v = getattr(self, name)
            if not (0 < v <= 1):
                raise ConfigError(f"{name}: a fraction of training in (0, 1], got {v}")
        if self.eval_batches < 1:
            raise ConfigError(f"eval_batches: at least 1, got {self.eval_batches}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip: must be > 0, or unset for no clipping; got {self.grad_clip}")
        if self.nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"nonfinite: {self.nonfinite!r} is unknown; {_config.closest(self.nonfinite, NONFINITE_POLICIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: {self.precision!r} is unknown; {_config.closest(self.precision, PRECISIONS)}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints: at least 1, got {self.keep_checkpoints}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: at least 1, got {self.threads}")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (0.0 <= v < 1.0):
                raise ConfigError(f"{name}: an Adam moment decay in [0, 1), got {v}; the paper uses 0.9 and 0.95")
        if not self.eps > 0:
            raise ConfigError(f"eps: must be > 0, got {self.eps}; 1e-8 is usual")
        for name in ("seed", "data_seed"):
            v = getattr(self, name)
            if not (0 <= v < 2**32):
                raise ConfigError(f"{name}: an integer in [0, 2**32), got {v} (numpy's seeds are 32-bit)")
        _check_device(self.device)


def _check_device(device: str) -> None:
    if device == "auto":
        return
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: {device!r} is not a torch device; use auto, cpu, cuda, cuda:1 or mps") from None


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: the model, the data, the training settings and the plan."""

    preset: str = _models.DEFAULT_SIZE
    model: _models.ModelConfig = field(default_factory=_models.ModelConfig)
    data: _data.DataConfig = field(default_factory=_data.DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plan: Plan = field(default_factory=Plan)

    def __post_init__(self) -> None:
        warmup = self.plan.factor(WidthWarmup)
        if warmup is not None and self.model.width_mult != 1.0:
            # Kosson et al.'s factor stands in for muP's implicit warmup; on top of muP it would apply 1/m twice.
            raise ConfigError(f"plan.width_warmup: {warmup.kind!r} replaces muP, which this model already "
                              f"uses (model.parametrization = 'mup', d_model {self.model.d_model} over base_width "
                              f"{self.model.base_width}); unset one of them")

    def to_dict(self) -> dict[str, Any]:
        return _config.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return _config.from_dict(cls, data, "")


# --- presets: size defaults for the training side --------------------------------------------------

# Batch size and tokenizer per model preset. The CPU presets use a small BPE vocabulary: with GPT-2's
# 50k ids the unembedding alone would dominate a d_model = 128 model's compute.
_RUN_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny-dense": {"data.tokenizer": "bytes", "train.batch_size": 8, "train.steps": 40},
    "tiny-moe": {"data.tokenizer": "bytes", "train.batch_size": 8, "train.steps": 40},
    **{name: {"data.tokenizer": "bpe-4096", "train.batch_size": 16, "train.steps": 2000}
       for name in ("micro-dense", "micro-moe", "small-dense", "small-moe")},
    # The ladder trains to tokens_per_param (no fixed steps); evals every 2% keep the held-out
    # loss curve fine enough for the speed-up while costing about 20% of the smallest rung's run.
    **{name: {"data.tokenizer": "bpe-1024", "train.batch_size": 16, "train.eval_interval": 0.02}
       for rungs in _models.LADDER.values() for name in rungs},
    **{name: {"train.batch_size": bs} for name, bs in _models.PAPER_BATCH_SIZE.items()},
}


def run_config(
    preset: str = _models.DEFAULT_SIZE,
    plan: str | Plan | None = None,
    config_file: str | Path | None = None,
    sets: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Resolve a run config: the size preset, then the plan, the config file, then ``sets``.

    ``plan`` is a preset name, a plan file or a :class:`Plan` (default: ``paper-moe`` for MoE
    presets, ``paper-dense`` for dense ones). ``sets`` are dotted keys (``"train.steps": 100``,
    ``"plan.router.start": 0.5``). Unknown keys raise naming the closest valid key. The model's
    vocabulary follows the tokenizer unless ``model.vocab_size`` is set explicitly.
    """
    model = _models.get_size(preset)
    if plan is None:
        plan = _presets.default_plans(model.is_moe)[1]
    plan_obj = plan if isinstance(plan, Plan) else _presets.resolve(plan)
    base = RunConfig(preset=preset, model=model, plan=plan_obj)
    overrides: dict[str, Any] = dict(_RUN_DEFAULTS.get(preset, {}))
    explicit: dict[str, Any] = {}
    if config_file is not None:
        explicit.update(_flatten(_config.load_file(config_file)))
    explicit.update(sets or {})
    if "preset" in explicit:
        raise ConfigError("preset: choose the model size with --model, not in the config")
    overrides.update(explicit)
    cfg = _config.replace(base, overrides, where="")
    if "model.vocab_size" not in explicit:
        vocab = _data.tokenizer_vocab_size(cfg.data.tokenizer)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    return cfg


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def total_steps(cfg: RunConfig) -> int:
    """Training length in steps: ``train.steps``, else the token budget over tokens per step."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    active = _models.count_params(cfg.model)["active_non_embedding"]
    per_step = cfg.train.batch_size * (cfg.train.seq_len or cfg.model.seq_len)
    return max(2, math.ceil(cfg.train.tokens_per_param * active / per_step))


def eval_steps(total: int, interval: float) -> list[int]:
    """The steps (completed optimizer steps) at which the eval loss is measured: 0, every
    ``interval`` of training, and the last step."""
    every = max(1, round(interval * total))
    return sorted({0, *range(every, total + 1, every), total})


# --- the loop -------------------------------------------------------------------------------------


NonFiniteLoss = Diverged  # the name the trainer's callers know; rlrs.runlog.Diverged is the one exception


class CheckpointError(RuntimeError):
    """No intact checkpoint to resume from, or one that belongs to another run config."""


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {cfg.device!r} but CUDA is not available; use 'cpu' or 'auto'")
    return dev


class Trainer:
    """Builds the model, data, optimizer and scheduler of a run, then trains it with :meth:`run`.

    ``resume=True`` continues from the newest complete checkpoint in ``out`` (bit-identical on CPU
    to a run that was never stopped). Under ``torchrun`` it trains data-parallel (gloo on CPU,
    nccl on GPU); only rank 0 writes files.
    """

    def __init__(self, cfg: RunConfig, out: str | Path, resume: bool = False, progress: bool = False):
        self.cfg = cfg
        self.out = Path(out)
        self.progress = progress
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = _device(cfg.train)
        if self.world_size > 1:
            self._init_distributed()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.total_steps = total_steps(cfg)
        self.seq_len = cfg.train.seq_len or cfg.model.seq_len
        if cfg.train.batch_size % self.world_size:
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} does not split over {self.world_size} "
                "processes; use a multiple of the process count"
            )
        self.data = self._prepare_data()
        if self.data.vocab_size != cfg.model.vocab_size:
            raise ConfigError(
                f"model.vocab_size: {cfg.model.vocab_size} does not match tokenizer "
                f"{cfg.data.tokenizer!r} ({self.data.vocab_size} ids); leave model.vocab_size unset"
            )
        self.eval_set = _data.val_batches(self.data.val, cfg.train.eval_batches, cfg.train.batch_size, self.seq_len, seed=0)
        self.eval_at = set(eval_steps(self.total_steps, cfg.train.eval_interval))
        every = max(1, round(cfg.train.checkpoint_interval * self.total_steps))
        self.checkpoint_at = set(range(every, self.total_steps + 1, every)) | {self.total_steps}

        torch.manual_seed(cfg.train.seed)
        self.model = _models.build_model(cfg.model).to(self.device)
        self.width = _models.width_factors(cfg.model)  # muP's per-component LR factors ({} for SP)
        self.groups = param_groups(self.model, cfg.plan, tensor_lr=cfg.train.compile, width_factors=self.width)
        # From each parameter's own component, not from the groups: identical groups are merged
        # (a uniform plan has one), and diagnostics must still be per component.
        params, owner = dict(self.model.named_parameters()), assign_components(self.model, cfg.plan)
        self.components = {c: [params[n] for n, o in owner.items() if o == c]
                           for c in COMPONENTS if c in owner.values()}
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.groups, betas=(cfg.train.beta1, cfg.train.beta2), eps=cfg.train.eps, fused=fused or None
        )
        self.scheduler = RelativeLR(self.optimizer, cfg.plan, self.total_steps)
        self.step = 0
        self.skipped = 0
        self.forward = self.model
        if self.world_size > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(self.model)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.autocast = (
            cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and self.device.type == "cuda")
        )
        self.wall_before = 0.0  # training time of earlier attempts (from the checkpoint)
        self._t_start: float | None = None  # when run() began
        if resume and not self._checkpoints() and not (self.out / "summary.json").exists():
            # Nothing to continue from (it died before its first checkpoint, or never started):
            # start it, cleanly (below).
            resume = False
        if resume:
            self._resume()
        elif self.rank == 0:
            self._start_fresh()

    # --- setup ------------------------------------------------------------------------------------

    def _prepare_data(self) -> "_data.TokenData":
        if self.world_size == 1:
            return _data.prepare(self.cfg.data)
        import torch.distributed as dist

        # Rank 0 tokenizes; the others wait, then open the finished cache.
        data = _data.prepare(self.cfg.data) if self.rank == 0 else None
        dist.barrier()
        return data or _data.prepare(self.cfg.data)

    def _init_distributed(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)

    def _died_before_first_checkpoint(self) -> bool:
        # It wrote its config (and maybe some log lines), then died: nothing worth keeping.
        return (self.out / "config.json").exists() and not (self.out / "summary.json").exists()

    def _start_fresh(self) -> None:
        if self._checkpoints():
            raise FileExistsError(
                f"{self.out} already holds a run; continue it with --resume or choose another --out"
            )
        if self._died_before_first_checkpoint():
            Trainer.clear_partial(self.out)
        elif (self.out / "metrics.jsonl").exists() or (self.out / "summary.json").exists():
            raise FileExistsError(
                f"{self.out} holds the logs of a run but no checkpoint to continue it from; "
                "choose another --out (or remove the directory to train it again)"
            )
        files.make_dir(self.out)
        # JSON, not TOML: TOML has no null, and a field set to None must round-trip exactly.
        files.atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2) + "\n")
        self.cfg.plan.save(self.out / "plan.toml")
        (self.out / "metrics.jsonl").touch()

    def _checkpoints(self) -> list[Path]:
        return _checkpoints(self.out)

    @staticmethod
    def can_resume(out: str | Path) -> bool:
        """Whether ``out`` holds a checkpoint to continue from."""
        return bool(_checkpoints(Path(out)))

    @staticmethod
    def clear_partial(out: str | Path) -> None:
        """Remove what a start that died before its first checkpoint left behind (its config and
        partial log), so the run can start cleanly. Refuses if there is a checkpoint."""
        out = Path(out)
        if Trainer.can_resume(out):
            raise FileExistsError(f"{out} holds checkpoints; continue it with --resume")
        for name in ("metrics.jsonl", "summary.json", "config.json", "plan.toml"):
            (out / name).unlink(missing_ok=True)
        for tmp in out.glob(".*.tmp"):  # an atomic write cut short
            tmp.unlink(missing_ok=True)

    def _resume(self) -> None:
        if not self._checkpoints():
            raise FileNotFoundError(f"{self.out}: no checkpoint to resume from; start without --resume")
        saved = RunConfig.from_dict(_config.load_file(self.out / "config.json"))
        if saved != self.cfg:
            raise ConfigError(
                f"{self.out}/config.json differs from the config given now in "
                f"{', '.join(_differences(saved.to_dict(), self.cfg.to_dict()))}; resume with the same "
                "command (or without --config/--set/--plan: --resume alone reads config.json)"
            )
        state = self._newest_intact_checkpoint()
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self.skipped = state["skipped"]
        self.wall_before = float(state.get("wall_s", 0.0))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_np_state(state["rng"]["numpy"]))
        random.setstate(_py_state(state["rng"]["python"]))
        if self.rank == 0:
            self._truncate_metrics(self.step)

    def _newest_intact_checkpoint(self) -> dict[str, Any]:
        """The newest checkpoint whose checksum holds and that loads; a damaged one is named,
        set aside (``*.damaged``) and the next older one tried. One of another config is refused."""
        damaged = []
        for path in reversed(self._checkpoints()):
            why = _checksum_problem(path)
            state = None
            if why is None:
                try:
                    state = torch.load(path, map_location=self.device, weights_only=True)
                except Exception as err:  # noqa: BLE001 - any failure to load means a damaged file
                    why = f"does not load ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            if why is not None:
                damaged.append(f"{path.name} {why}")
                _warn(f"rlrs: {path} {why}; set aside as {path.name}.damaged, trying the next older checkpoint")
                if self.rank == 0:
                    os.replace(path, path.with_name(path.name + ".damaged"))
                    _checksum_path(path).unlink(missing_ok=True)
                continue
            theirs = state.get("config")
            # Compared as configs, not dicts: a checkpoint saved before a setting was added lacks
            # its key and means its default.
            if theirs is not None and not _same_config(theirs, self.cfg):
                raise CheckpointError(
                    f"{path}: belongs to another run config (differs in {', '.join(_differences(theirs, self.cfg.to_dict()))}); "
                    "resume with the config it was trained with"
                )
            return state
        raise CheckpointError(f"{self.out}: no intact checkpoint to resume from ({'; '.join(damaged)}); "
                              "train it again in a fresh --out")

    def _truncate_metrics(self, step: int) -> None:
        # Records after the checkpoint's step will be written again by the resumed run. A damaged
        # line is reported and dropped; every intact record up to the step is kept.
        got = read_log(self.out)
        for line in got.warnings():
            _warn(f"rlrs: {line} (dropped)")
        rewrite(self.out, [r for r in got.records if r.step is None or r.step <= step])

    # --- checkpoints ----------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_XXXXXXX.pt`` atomically and keep the newest few."""
        ckdir = self.out / "checkpoints"
        ckdir.mkdir(parents=True, exist_ok=True)
        path = ckdir / f"step_{self.step:07d}.pt"
        state = {
            "step": self.step,
            "skipped": self.skipped,
            "wall_s": self.wall_before + (time.perf_counter() - self._t_start if self._t_start else 0.0),
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": _np_plain(np.random.get_state()),
                "python": _py_plain(random.getstate()),
            },
        }
        for stale in ckdir.glob(".*.tmp"):  # a write a kill cut short (the run's lock is ours)
            stale.unlink(missing_ok=True)
        # The checksum first: a checkpoint is only ever visible with the checksum it must match.
        with files.atomic_file(path, "wb", before_replace=lambda tmp: files.atomic_write_text(
                _checksum_path(path), files.sha256_file(tmp) + "\n")) as f:
            torch.save(state, f)
        for old in self._checkpoints()[: -self.cfg.train.keep_checkpoints]:
            old.unlink()
            _checksum_path(old).unlink(missing_ok=True)
        return path

    # --- training -------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the fixed held-out batches."""
        self.model.eval()
        losses = []
        for x, y in self.eval_set:
            with self._autocast():
                losses.append(self.model(x.to(self.device), y.to(self.device)).loss.float().item())
        self.model.train()
        return float(np.mean(losses))

    def run(self, stop_at: int | None = None) -> RunResult:
        """Train to the end (or until ``stop_at`` completed steps, checkpointed, to resume later).
        Says how it ended (:class:`rlrs.outcome.RunResult`; ``error``: why it is ``unstable``); a
        non-finite loss raises :class:`rlrs.runlog.Diverged`.

            >>> Trainer(cfg, "runs/x").run(stop_at=100).status                 # doctest: +SKIP
            'stopped'
        """
        if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
            raise ConfigError(f"stop_at: a step >= 1, got {stop_at!r}; e.g. --stop-at 100")
        start = self._t_start = time.perf_counter()
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        if self.step >= end and self.step > 0:
            return self._already_done(stop_at)
        log = _Log(self.out / "metrics.jsonl", enabled=self.rank == 0, tensorboard=self.cfg.train.tensorboard,
                   resume_step=self.step, wandb=self.cfg.train.wandb, config=self.cfg.to_dict())
        bar = _progress_bar(self.total_steps, self.step, enabled=self.progress and self.rank == 0)
        last_train = None
        final_eval = None
        diverged = False
        try:
            if self.step == 0 and 0 in self.eval_at:
                final_eval = self._eval_record(log)
            while self.step < end:
                diag = (self.step + 1) in self.eval_at
                rec = self._train_step(diag)
                last_train = rec.loss if rec.loss is not None else last_train
                log.write(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec.value('loss'):.3f}", refresh=False)
                if self.step in self.eval_at:
                    final_eval = self._eval_record(log)
                if self.step in self.checkpoint_at or self.step == end:
                    if self.rank == 0:
                        self.save_checkpoint()
        except NonFiniteLoss:
            diverged = True
            log.write(EventRecord("event", self.step, {"event": "diverged"}))
            raise
        finally:
            log.close()
            if bar is not None:
                bar.close()
            if diverged and self.rank == 0:
                self._write_summary(status_of(nonfinite=True), last_train, final_eval, self._wall())
        result = self._result(stop_at, final_eval, last_train, time.perf_counter() - start)
        status, reason = result.status, result.error
        if self.rank == 0:
            self._write_summary(status, last_train, final_eval, self._wall(), reason)
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()  # every rank returns once rank 0's summary is written
        return result

    def _wall(self) -> float:
        """Training time over every attempt of this run."""
        return self.wall_before + time.perf_counter() - self._t_start

    def _unstable(self, final_eval: float | None) -> str | None:
        if self.skipped > UNSTABLE_SKIP_SHARE * self.total_steps:
            return (f"{self.skipped} of {self.total_steps} steps were skipped for a non-finite loss or gradient "
                    "(train.nonfinite = skip): it barely trained; lower plan.base_lr")
        if final_eval is None or not math.isfinite(final_eval):
            return f"its final eval loss is {final_eval}: not a result"
        return None

    def _already_done(self, stop_at: int | None) -> RunResult:
        # Resumed at (or past) where it was asked to stop: report what the logs hold and change
        # nothing. Only a summary that a kill after the last checkpoint never let be written is
        # written now, from the checkpoint's state and the log.
        got = read_log(self.out)
        evals = [r for r in got.evals if r.step <= self.step]
        train = [r for r in got.train if r.loss is not None and r.step <= self.step]
        final_eval = evals[-1].value() if evals else None  # null in the log: NaN, not finite
        result = self._result(stop_at, final_eval, train[-1].loss if train else None, 0.0)
        result.already_done = True
        if self.rank == 0 and not _readable_json(self.out / "summary.json"):
            self._write_summary(result.status, result.final_train_loss, final_eval, self.wall_before, result.error)
        return result

    def _result(self, stop_at: int | None, final_eval: float | None, last_train: float | None,
                wall_s: float) -> RunResult:
        """How a run that trained to its end or to ``stop_at`` ended (the status: :func:`status_of`)."""
        reached_end = self.step >= self.total_steps
        reason = self._unstable(final_eval) if reached_end else None
        status = status_of(reached_end=reached_end, reached_stop=stop_at is not None and self.step >= stop_at,
                           unstable=reason is not None)
        xs, ys = read_log(self.out).eval_curve()  # up to this step: a resumed run's log was cut back to it
        return RunResult(self.out, status, self.step, self.total_steps, xs, ys, last_train, wall_s=wall_s,
                         error=reason, skipped_steps=self.skipped)

    def _write_summary(self, status, train_loss, eval_loss, wall_s, reason: str | None = None) -> None:
        summary = {
            "status": status,
            "reason": reason,
            "steps": self.step,
            "total_steps": self.total_steps,
            "tokens": self.step * self.cfg.train.batch_size * self.seq_len,
            "final_eval_loss": eval_loss,
            "final_train_loss": train_loss,
            "skipped_steps": self.skipped,
            "wall_s": wall_s,
            "params": _models.count_params(self.cfg.model),
        }
        files.write_json(self.out / "summary.json", summary, indent=2)

    def _eval_record(self, log: "_Log") -> float:
        loss = self.evaluate()
        log.write(EvalRecord(self.step, loss, tokens=self._tokens(), lr=self._lrs(self.step)))
        return loss

    def _tokens(self) -> int:
        return self.step * self.cfg.train.batch_size * self.seq_len

    def _lrs(self, step: int) -> dict[str, float]:
        return {c: self.cfg.plan.lr(c, min(step, self.total_steps - 1), self.total_steps,
                                            width=self.width.get(c, 1.0)) for c in self.components}

    def _train_step(self, diag: bool) -> TrainRecord:
        cfg = self.cfg.train
        t0 = time.perf_counter()
        step = self.step
        x, y = _data.get_batch(self.data.train, step, cfg.batch_size, self.seq_len, cfg.data_seed,
                               rank=self.rank, world_size=self.world_size)
        x, y = x.to(self.device), y.to(self.device)
        # Diagnostics steps keep a sample of every matrix's input (not under torch.compile: hooks
        # would recompile the graph) for the representation change below.
        taps = _InputTaps(self.model) if diag and not cfg.compile else None
        try:
            with self._autocast():
                out = self.forward(x, y)
        finally:
            if taps is not None:
                taps.remove()
        loss = out.loss + out.aux_loss
        rec = TrainRecord(step + 1, tokens=(step + 1) * cfg.batch_size * self.seq_len, lr=self._lrs(step))
        self.optimizer.zero_grad(set_to_none=True)
        if not self._finite(loss.detach()):
            return self._nonfinite(rec, f"loss is {loss.item()}")
        loss.backward()
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        else:
            gnorm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in self.model.parameters() if p.grad is not None])
            )
        if not self._finite(gnorm):
            return self._nonfinite(rec, f"gradient norm is {gnorm.item()}")
        before = {c: [p.detach().clone() for p in ps] for c, ps in self.components.items()} if diag else None
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        ce = self._mean(out.loss.detach())
        metrics = {"grad_norm": gnorm.item()}
        if out.stats:
            metrics.update(_moe_record(out.stats))
        if before is not None:
            metrics.update(self._update_stats(before))
            if taps is not None:
                metrics.update(self._representation_stats(taps, before))
        metrics["tokens_per_s"] = x.numel() * self.world_size / (time.perf_counter() - t0)
        return dataclasses.replace(rec, loss=ce, metrics=metrics)

    def _finite(self, value: torch.Tensor) -> bool:
        ok = torch.isfinite(value).all().float()
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank takes the same branch
        return bool(ok.item())

    def _mean(self, value: torch.Tensor) -> float:
        if self.world_size > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value.item()

    def _nonfinite(self, rec: TrainRecord, what: str) -> TrainRecord:
        step = self.step
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.train.nonfinite == "abort":
            ckpts = self._checkpoints()
            last = f"the newest checkpoint is {ckpts[-1]}" if ckpts else "no checkpoint was written yet"
            raise NonFiniteLoss(
                f"step {step + 1}: {what}; stopped before the update, so the parameters are those after "
                f"step {step} and {last}. Lower plan.base_lr (or a component's start), or set "
                "train.nonfinite=skip to skip such steps"
            )
        # skip: no update, so parameters, moments and the optimizer's step count stay as they were;
        # the schedule and the data move on so the run still ends at total_steps.
        self.scheduler.step()
        self.step += 1
        self.skipped += 1
        return dataclasses.replace(rec, skipped=True, reason=what)

    @torch.no_grad()
    def _update_stats(self, before: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        # Per-component update size and update-to-weight ratio (Frobenius over the component).
        stats = {}
        for c, ps in self.components.items():
            du = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(ps, before[c]))
            w = sum(float(b.float().pow(2).sum()) for b in before[c])
            n = sum(b.numel() for b in before[c])
            stats[f"update_rms/{c}"] = math.sqrt(du / n)
            stats[f"update_ratio/{c}"] = math.sqrt(du / w) if w > 0 else float("nan")
        return stats


    def _representation_stats(self, taps: "_InputTaps", before: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        # Relative representation change ‖ΔY‖/‖Y‖ of each component (Y = W X on this step's
        # inputs, ΔW this step's update), with Kosson et al.'s (arXiv 2510.19093) decomposition into the update's and
        # the weights' alignment with X: ‖ΔY‖/‖Y‖ = (α_ΔW / α_W) · ‖ΔW‖/‖W‖, where
        # α_ΔW = ‖ΔW X‖ / (‖ΔW‖ ‖X‖) and α_W = ‖W X‖ / (‖W‖ ‖X‖). A component's matrices count as
        # one block-diagonal map (sums of squares), so the identity holds per component too.
        old = {id(p): b for c, ps in self.components.items() for p, b in zip(ps, before[c])}
        comp_of = {id(p): c for c, ps in self.components.items() for p in ps}
        sums: dict[str, list[float]] = {}
        for w, w0, x, kind in taps.matrices(old):
            c = comp_of.get(id(w))
            if c is None:
                continue
            dw = w.detach().float() - w0
            y, dy, x2 = _outputs(kind, w0, dw, x)
            s = sums.setdefault(c, [0.0] * 5)
            for i, v in enumerate((float(y.pow(2).sum()), float(dy.pow(2).sum()), x2,
                                   float(w0.pow(2).sum()), float(dw.pow(2).sum()))):
                s[i] += v
        stats = {}
        for c, (y2, dy2, x2, w2, dw2) in sums.items():
            if y2 > 0 and w2 > 0 and x2 > 0:
                stats[f"rep_change/{c}"] = math.sqrt(dy2 / y2)
                stats[f"align_weight/{c}"] = math.sqrt(y2 / (w2 * x2))
                stats[f"align_update/{c}"] = math.sqrt(dy2 / (dw2 * x2)) if dw2 > 0 else float("nan")
        return stats


TAP_ROWS = 1024
"""Input rows (tokens) a diagnostics step keeps per matrix: enough for the norms, cheap at any size."""


class _InputTaps:
    """Forward pre-hooks that keep a sample of the input of every ``nn.Linear``, ``nn.Embedding``
    and :class:`~rlrs.models.Experts` for one forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
        self.handles = [m.register_forward_pre_hook(self._keep) for m in model.modules()
                        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, _models.Experts))]

    def _keep(self, module: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach()
        if isinstance(module, _models.Experts):  # [E, capacity, d]: a sample of each expert's slots
            x = x[:, : max(1, TAP_ROWS // x.shape[0])].float()
        elif isinstance(module, torch.nn.Embedding):
            x = x.reshape(-1)[:TAP_ROWS]
        else:
            x = x.reshape(-1, x.shape[-1])[:TAP_ROWS].float()
        self.inputs.append((module, x))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def matrices(self, old: dict[int, torch.Tensor]):
        """(weight, its value before the step, input sample, kind) for every tapped matrix."""
        for module, x in self.inputs:
            if isinstance(module, _models.Experts):
                wg, wu, wd = module.w_gate, module.w_up, module.w_down
                if not all(id(w) in old for w in (wg, wu, wd)):
                    continue
                yield wg, old[id(wg)].float(), x, "bmm"
                yield wu, old[id(wu)].float(), x, "bmm"
                h = F.silu(torch.bmm(x, old[id(wg)].float())) * torch.bmm(x, old[id(wu)].float())
                yield wd, old[id(wd)].float(), h, "bmm"
            elif id(module.weight) in old:
                kind = "rows" if isinstance(module, torch.nn.Embedding) else "linear"
                yield module.weight, old[id(module.weight)].float(), x, kind


def _outputs(kind: str, w0: torch.Tensor, dw: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(W X, ΔW X, ‖X‖²) for a linear layer, a batched expert matmul or an embedding lookup."""
    if kind == "rows":  # X is one-hot token ids: W X picks rows
        return w0[x], dw[x], float(x.numel())
    if kind == "bmm":
        return torch.bmm(x, w0), torch.bmm(x, dw), float(x.pow(2).sum())
    return x @ w0.t(), x @ dw.t(), float(x.pow(2).sum())


def _moe_record(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    load = stats["expert_load"].float()
    p = load / load.sum().clamp_min(1e-12)
    entropy = float(-(p * p.clamp_min(1e-12).log()).sum())
    return {
        "moe/z_loss": float(stats["z_loss"]),
        "moe/balance_loss": float(stats["balance_loss"]),
        "moe/dropped_tokens": float(stats["dropped_tokens"]),
        "moe/load_entropy": entropy / math.log(len(p)) if len(p) > 1 else 1.0,
        "moe/max_load": float(p.max()),
        "moe/expert_load": [round(float(v), 6) for v in p],
    }


def _np_plain(state) -> list:
    return [state[0], torch.from_numpy(state[1].astype(np.int64)), int(state[2]), int(state[3]), float(state[4])]


def _np_state(plain) -> tuple:
    return (plain[0], plain[1].numpy().astype(np.uint32), plain[2], plain[3], plain[4])


def _py_plain(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_state(plain) -> tuple:
    return (plain[0], tuple(plain[1]), plain[2])


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*.pt"))


def _checksum_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".sha256")


def _checksum_problem(ckpt: Path) -> str | None:
    try:
        expected = _checksum_path(ckpt).read_text().strip()
    except FileNotFoundError:
        return "has no checksum file"
    return None if files.sha256_file(ckpt) == expected else "fails its checksum (the file changed after it was written)"


def _same_config(saved: Mapping[str, Any], cfg: RunConfig) -> bool:
    try:
        return RunConfig.from_dict(saved) == cfg
    except ConfigError:  # not even a config of this version: another run's
        return False


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ, with both values: ``train.steps (200 vs 300)``."""
    return [f"{k} ({va!r} vs {vb!r})" for k, va, vb in _config.differences(a, b)]


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Log:
    """Appends JSON lines; flushed per record so a crash loses at most the line being written.

    With ``tensorboard`` it also writes every number of every record as a TensorBoard scalar
    (``train/loss``, ``train/lr/router``, ``eval/eval_loss``) to ``<out>/tensorboard``; a
    resumed run hides what the earlier attempt wrote after ``resume_step`` (``purge_step``),
    as the JSONL is cut there too. With ``wandb`` it logs the same numbers to a W&B run in
    ``<out>/wandb``: offline unless ``WANDB_MODE`` says otherwise (``wandb sync`` uploads it),
    one W&B run per run directory, continued by a resume (W&B keeps the first value it got for a
    step, so steps an interrupted attempt had logged keep that attempt's values there). W&B's
    service process finishes writing the run file after ``close`` returns; it is whole once the
    process exits or ``wandb.teardown()`` returns.
    """

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False, resume_step: int = 0,
                 wandb: bool = False, config: Mapping[str, Any] | None = None):
        self.f = RunLog(path) if enabled else None
        self.tb = self.wb = None
        if enabled and tensorboard:
            writer = _config.require("tensorboardX", "tensorboard").SummaryWriter
            self.tb = writer(str(path.parent / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        if enabled and wandb:
            import hashlib

            wb = _config.require("wandb", "wandb")
            run_id = hashlib.sha256(str(path.parent.resolve()).encode()).hexdigest()[:16]
            self.wb = wb.init(project=os.environ.get("WANDB_PROJECT", "rlrs"), dir=str(path.parent), id=run_id,
                              resume="allow", mode=os.environ.get("WANDB_MODE", "offline"), config=dict(config or {}),
                              name=path.parent.name)

    def write(self, rec: Record) -> None:
        if self.f is not None:
            self.f.append(rec)
        if isinstance(rec, (TrainRecord, EvalRecord)) and (self.tb is not None or self.wb is not None):
            scalars = {f"{rec.kind}/{key}": value for key, value in rec.to_json().items()
                       if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)}
            if self.tb is not None:
                for tag, value in scalars.items():
                    self.tb.add_scalar(tag, value, rec.step)
            if self.wb is not None:
                self.wb.log(scalars, step=rec.step)

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    tqdm = _config.require("tqdm", "progress").tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=False)
