"""The zoo's tasks: offline datasets with fixed splits, their models, and the loop that trains one.

    >>> from rlrs.zoo.tasks import TASKS
    >>> t = TASKS["gauss"]
    >>> t.target, t.epochs, t.batch_size   # every task is scored by test accuracy
    (0.94, 80, 64)

- ``gauss``: the synthetic task of the DALS paper (arXiv 2604.27295). A 10-class Gaussian
  mixture in 64 dimensions (10 informative, 54 noise), 6400/1600 examples (balanced), a 4-layer
  MLP 64→128→128→10, 80 epochs, batch 64. The data is drawn once from a fixed seed, so every run
  sees the same split.
- ``digits``: images from scratch. scikit-learn's bundled 8×8 digits (1,797 images; the DALS
  paper uses CIFAR-10, which cannot be fetched here), a stratified 80/20 split fixed by seed, a small
  ConvNet (3 convolutions and a linear head, as in the DALS paper), 50 epochs, batch 64.
- ``gcide-pos`` and ``shakespeare-genre``: fine-tuning the pretrained MiniLM-L6 encoder
  (:mod:`rlrs.zoo.finetune`; stand-ins for the DALS paper's RTE, TREC-6 and IMDb with DistilBERT), 1
  epoch, batch 32, inputs cut to 32 tokens, every strategy's η × 0.1 (:attr:`Task.lr_scale`).
- ``lm``: pretraining ``ladder-xs-dense`` on Shakespeare for its 20-tokens-per-parameter horizon,
  next-token accuracy on held-out plays; every strategy's η × 10 (:attr:`Task.lr_scale`).

A classifier's input layer follows the ``embedding`` schedule, its output layer (the head, the
last of its numbered ``layers``, so depth factors count it) ``unembedding`` and the rest
``feedforward`` (:func:`classifier_rules`): the nearest analogue of a Transformer's parts.
The encoder's parts are found as for any Transformer; only its new head needs a rule.

:func:`train_task` trains one (task, strategy, seed) into a run directory: ``metrics.jsonl`` holds
``train`` records (the loss every few steps) and ``eval`` records (``eval_loss`` and
``accuracy`` on the held-out split after every epoch), which is what the run engine and
:mod:`rlrs.analysis` read. A non-finite loss stops the run as diverged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import config as _config
from .. import files
from ..config import ConfigError
from ..engine import RunKind
from ..outcome import RunResult, status_of
from ..plan import Plan
from ..runlog import Diverged, EvalRecord, RunLog, TrainRecord, read_log
from .strategies import Strategy, build

def classifier_rules(n_layers: int) -> tuple[tuple[str, str], ...]:
    """Component rules of a classifier with numbered ``layers`` (the last one its head)."""
    return ((r"^layers\.0\.", "embedding"), (rf"^layers\.{n_layers - 1}\.", "unembedding"), (r".", "feedforward"))
TRAIN_LOG_EVERY = 10  # steps between train-loss records


@dataclass(frozen=True)
class Split:
    """A fixed train/test split (features as float32, labels as int64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Task:
    """One benchmark task: its data, its model and how long it trains."""

    name: str
    summary: str
    load: Callable[[], Split]
    model: Callable[[], nn.Module]
    epochs: int
    batch_size: int
    target: float  # the accuracy a "time to target" is measured to
    rules: tuple[tuple[str, str], ...]  # (regex, component) rules for the model's parameters
    objective: str = "classify"  # or "lm": x holds token windows, the metric is next-token accuracy
    eval_every: int | None = None  # steps between evals (default: after every epoch)
    lr_scale: float = 1.0  # every strategy's η times this on this task (see TASKS)
    fetch: Callable[[], None] | None = None  # what to download or prepare once, before parallel runs
    version: int = 1  # bump when the data or the model change: old runs are then not reused

    def strategy_for(self, strategy: Strategy) -> Strategy:
        """``strategy`` as this task trains it (its η times :attr:`lr_scale`)."""
        return strategy if self.lr_scale == 1.0 else strategy.with_base_lr(strategy.plan.base_lr * self.lr_scale)

    def steps(self, split: Split, epochs: int | None = None) -> int:
        per_epoch = math.ceil(len(split.y_train) / self.batch_size)
        return per_epoch * (epochs or self.epochs)


# --- data ------------------------------------------------------------------------------------------


def gauss_mixture(seed: int = 0, n_train: int = 6400, n_test: int = 1600, classes: int = 10, dims: int = 64,
                  informative: int = 10, spread: float = 1.5) -> Split:
    """The DALS paper's synthetic data: class means ~ N(0, spread²) in the first ``informative``
    dimensions, unit noise everywhere, the other dimensions pure noise; balanced classes. At
    ``spread = 1.5`` the nearest true mean classifies 96.4% right (the Bayes rate; the DALS paper's best
    strategy reached 98% on its draw)."""
    rng = np.random.default_rng(seed)
    means = np.zeros((classes, dims))
    means[:, :informative] = rng.normal(0.0, spread, (classes, informative))

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.repeat(np.arange(classes), n // classes)
        rng.shuffle(y)
        x = means[y] + rng.normal(0.0, 1.0, (len(y), dims))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)

    return Split(*draw(n_train), *draw(n_test))


def digits(seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's digits as 1×8×8 images in [0, 1], a stratified split fixed by ``seed``."""
    datasets = _config.require("sklearn.datasets", "zoo")
    d = datasets.load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.permutation(idx)[: round(test_fraction * len(idx))]] = True
    return Split(torch.tensor(x[~test]), torch.tensor(y[~test]), torch.tensor(x[test]), torch.tensor(y[test]))


# --- models ----------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Linear ``layers`` with ReLU between, numbered from the input (for depth factors); the
    last is the head."""

    def __init__(self, sizes: tuple[int, ...] = (64, 128, 128, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class ConvNet(nn.Module):
    """``layers``: three 3×3 convolutions (the last two followed by 2×2 max-pooling), then the
    linear head."""

    def __init__(self, channels: tuple[int, ...] = (1, 16, 32, 32), size: int = 8, classes: int = 10):
        super().__init__()
        convs = [nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels, channels[1:])]
        self.layers = nn.ModuleList([*convs, nn.Linear(channels[-1] * (size // 4) ** 2, classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convs = len(self.layers) - 1
        for i, layer in enumerate(self.layers[:-1]):
            x = F.relu(layer(x))
            if i >= convs - 2:
                x = F.max_pool2d(x, 2)
        return self.layers[-1](x.flatten(1))


def _tokenized(t) -> Split:
    from .finetune import tokenize

    return Split(tokenize(t.x_train), torch.tensor(t.y_train), tokenize(t.x_test), torch.tensor(t.y_test))


def _gcide_pos() -> Split:
    from .finetune import gcide_pos

    return _tokenized(gcide_pos())


def _shakespeare_genre() -> Split:
    from .finetune import shakespeare_genre

    return _tokenized(shakespeare_genre())


def _minilm(classes: int) -> Callable[[], nn.Module]:
    def model() -> nn.Module:
        from .finetune import minilm_classifier

        return minilm_classifier(classes)

    return model


ENCODER_RULES = ((r"^head\.", "unembedding"),)
LM_PRESET = "ladder-xs-dense"
LM_EVAL_WINDOWS = 256


def _lm_split() -> Split:
    """``LM_PRESET``'s data as windows of ``seq_len + 1`` tokens: as many training windows as its
    20-tokens-per-parameter horizon uses (one epoch of them is its run), and held-out windows."""
    from ..data import prepare
    from ..train import run_config, total_steps

    cfg = run_config(LM_PRESET)
    data = prepare(cfg.data)
    w = cfg.model.seq_len + 1
    n = total_steps(cfg) * cfg.train.batch_size

    def windows(stream, count: int) -> torch.Tensor:
        if len(stream) < count * w:
            raise ConfigError(f"task lm: {LM_PRESET}'s data has {len(stream)} tokens, fewer than {count} windows of {w}")
        return torch.from_numpy(np.asarray(stream[: count * w], dtype=np.int64).reshape(count, w))

    x_train, x_test = windows(data.train, n), windows(data.val, LM_EVAL_WINDOWS)
    return Split(x_train, torch.zeros(n, dtype=torch.int64), x_test, torch.zeros(LM_EVAL_WINDOWS, dtype=torch.int64))


def _lm_fetch() -> None:
    from ..data import prepare
    from ..train import run_config

    prepare(run_config(LM_PRESET).data)


def _minilm_fetch() -> None:
    from .finetune import minilm_dir

    minilm_dir()


def _lm_model() -> nn.Module:
    from ..models import build_model
    from ..train import run_config

    return build_model(run_config(LM_PRESET).model)


def loss_and_hits(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The batch's mean loss, how many predictions were right, and how many there were (a
    classifier predicts each label, a language model each next token)."""
    if task.objective == "lm":
        inputs, targets = x[:, :-1], x[:, 1:]
        out = model(inputs, targets)
        return out.loss + out.aux_loss, int((out.logits.argmax(-1) == targets).sum()), targets.numel()
    logits = model(x)
    return F.cross_entropy(logits, y), int((logits.argmax(-1) == y).sum()), len(y)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("gauss", "10-class Gaussian mixture in R^64 (10 informative dims), 6400/1600, MLP 64-128-128-10",
             # Every strategy passes 90% within the first epoch; 94% tells them apart.
             gauss_mixture, MLP, epochs=80, batch_size=64, target=0.94, rules=classifier_rules(3)),
        Task("digits", "scikit-learn digits (8x8), stratified 80/20, 3-conv ConvNet (stand-in for CIFAR-10)",
             digits, ConvNet, epochs=50, batch_size=64, target=0.95, rules=classifier_rules(4)),
        # Fine-tuning a pretrained encoder: one epoch, evals every 16 steps, and every strategy's η
        # times 0.1 (AdamW's 1e-3 for a classifier from scratch is 1e-4 here, the usual fine-tuning
        # rate for a BERT this size).
        Task("gcide-pos", "GCIDE definitions by part of speech (4 classes, 2000/600), fine-tuning MiniLM-L6",
             # Full fine-tuning passes 0.8 at the first eval (step 16) and 0.9 at step 32 of 63.
             _gcide_pos, _minilm(4), epochs=1, batch_size=32, target=0.9, rules=ENCODER_RULES, eval_every=16,
             lr_scale=0.1, fetch=_minilm_fetch, version=2),
        Task("shakespeare-genre", "Shakespeare speeches by genre (3 classes, 1500/450, unseen test plays), "
             "fine-tuning MiniLM-L6", _shakespeare_genre, _minilm(3), epochs=1, batch_size=32, target=0.5,
             rules=ENCODER_RULES, eval_every=16, lr_scale=0.1, fetch=_minilm_fetch, version=2),
        Task("lm", f"language-model pretraining: {LM_PRESET} on Shakespeare (bpe-1024) at 20 tokens per parameter, "
             "next-token accuracy", _lm_split, _lm_model, epochs=1, batch_size=16, target=0.24, rules=(),
             # The ladder's η_base grid put AdamW's best at 0.01 to 0.02 on this model, 10 to 20
             # times the strategies' default η (made for the classifiers): every η is scaled by 10.
             objective="lm", eval_every=32, lr_scale=10.0, fetch=_lm_fetch),
    )
}


def get(name: str) -> Task:
    """The task called ``name`` (an unknown name gets the closest valid one)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"task: {name!r} is unknown; {_config.closest(name, list(TASKS))}") from None


# --- training ------------------------------------------------------------------------------------------


def evaluate(task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on ``x``, ``y`` (in eval mode; the mode is restored)."""
    was = model.training
    model.eval()
    loss, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            value, h, n = loss_and_hits(task, model, x[i:i + batch], y[i:i + batch])
            loss, hits, count = loss + float(value) * n, hits + h, count + n
    model.train(was)
    return loss / count, hits / count


def train_task(task: Task, strategy: Strategy, seed: int, out: str | Path, epochs: int | None = None) -> RunResult:
    """Train ``task``'s model with ``strategy`` from seed ``seed``, logging into ``out/metrics.jsonl``
    (started afresh: these runs take seconds to minutes, so they restart instead of resuming), and
    say how it ended with its eval curve; a non-finite loss raises :class:`rlrs.runlog.Diverged`.

        >>> train_task(TASKS["gauss"], rlrs.zoo.strategies.get("adamw"), 0, "runs/g").status  # doctest: +SKIP
        'finished'
    """
    out = Path(out)
    files.make_dir(out, "--out")
    split = task.load()
    torch.manual_seed(seed)
    model = task.model()
    model.train()  # from_pretrained leaves a model in eval mode (dropout off)
    total = task.steps(split, epochs)
    opt = build(task.strategy_for(strategy), model, total, rules=task.rules)
    order = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    n = len(split.y_train)
    with RunLog(out, "w") as log:
        def eval_now() -> tuple[float, float]:
            ev_loss, acc = evaluate(task, model, split.x_test, split.y_test)
            log.append(EvalRecord(step, ev_loss if math.isfinite(ev_loss) else None,
                                  metrics={"accuracy": acc, "wall_s": time.perf_counter() - t0}))
            return ev_loss, acc

        step, loss = 0, math.nan
        while step < total:
            perm = torch.randperm(n, generator=order)
            for i in range(0, n, task.batch_size):
                if step >= total:
                    break
                idx = perm[i:i + task.batch_size]
                xb, yb = split.x_train[idx], split.y_train[idx]

                def loss_and_backward() -> torch.Tensor:
                    value = loss_and_hits(task, model, xb, yb)[0]
                    value.backward()
                    return value

                loss = opt.step(model, loss_and_backward)
                step += 1
                if not math.isfinite(loss):
                    log.append(TrainRecord(step))
                    raise Diverged(f"training loss {loss} at step {step}")
                if step % TRAIN_LOG_EVERY == 0 or step == total:
                    log.append(TrainRecord(step, loss, metrics={"lr": opt.scheduler.get_last_lr()[0]}))
                if task.eval_every and step % task.eval_every == 0 and step < total:
                    eval_now()
            if not task.eval_every or step == total:
                ev_loss = eval_now()[0]
        if not math.isfinite(ev_loss):  # the last update broke the weights: not a finished run
            raise Diverged(f"held-out loss {ev_loss} after the last step ({step})")
        log.sync()
    xs, ys = read_log(out).eval_curve()
    return RunResult(out, status_of(reached_end=step >= total), step, total, xs, ys, loss,
                     wall_s=time.perf_counter() - t0)


@dataclass(frozen=True)
class TaskRun(RunKind):
    """A strategy-zoo run: ``task`` (a :data:`rlrs.zoo.tasks.TASKS` name) trained with ``strategy``
    from ``seed``, for the task's epochs unless ``epochs`` is given. A run of the engine
    (:class:`rlrs.engine.RunKind`): it trains to its end (seconds to minutes) and starts again
    instead of resuming.

        >>> spec = TaskRun("gauss", rlrs.zoo.strategies.get("adamw"), seed=0)    # doctest: +SKIP
        >>> rlrs.engine.execute(spec, rlrs.engine.run_dir("runs", spec)).status  # doctest: +SKIP
        'finished'
    """

    task: str
    strategy: Strategy
    seed: int = 0
    epochs: int | None = None
    stops: ClassVar[bool] = False

    def __post_init__(self) -> None:
        get(self.task)  # an unknown task names the closest
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs: at least 1, got {self.epochs}")

    @property
    def plan(self) -> Plan:
        return get(self.task).strategy_for(self.strategy).plan

    @property
    def total_steps(self) -> int | None:
        return None  # known once the task's data is loaded (in the worker)

    @property
    def prefix(self) -> str:
        return f"{self.task}-{self.strategy.name}"

    def identity(self) -> dict[str, Any]:
        t = get(self.task)  # its training settings too: changing one must not reuse old runs
        setup = {"version": t.version, "epochs": self.epochs or t.epochs, "batch_size": t.batch_size,
                 "lr_scale": t.lr_scale, "eval_every": t.eval_every, "objective": t.objective,
                 "rules": [list(r) for r in t.rules]}
        # What the strategy computes, not how it is titled or cited.
        strategy = {k: v for k, v in _config.identity(self.strategy).items()
                    if k not in ("name", "title", "generation", "paper", "tasks")}
        return {"task": self.task, "setup": setup, "strategy": strategy, "seed": self.seed}

    def run(self, out: Path, stop_at: int | None, progress: bool) -> RunResult:
        r = train_task(get(self.task), self.strategy, self.seed, out, self.epochs)
        r.compute_steps = r.steps  # it starts afresh: every step it trained is this call's
        return r
