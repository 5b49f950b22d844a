"""Analysis of run logs, in one place: the paper's speed-up metric and seed statistics
(appendix A), and what a run's logs say (eval curve, windowed train loss, loss spikes, update
sizes, MoE router health).

    >>> base = ([0, 10, 20, 30, 40], [5.0, 4.0, 3.5, 3.2, 3.0])
    >>> rel = ([0, 10, 20, 30, 40], [5.0, 3.6, 3.1, 2.95, 2.8])
    >>> s = speedup(*base, *rel)
    >>> s.t_base, s.t_relative, round(s.percent, 1)
    (40, 30, 33.3)

Both curves are read the same way, so that two arms that train alike measure 0%. Each mean
curve is first made monotone: its best non-increasing fit (least squares, the pool-adjacent-
violators algorithm), which averages an eval's noise over its neighbours instead of letting one
lucky point decide. The target ``L`` is the baseline's fitted final loss; ``T_base`` and
``T_relative`` are the first measuring steps at which each arm's fit is ≤ ``L``, and the
speed-up is ``(T_base / T_relative − 1) × 100%``. On a curve that still falls at its last point
(the paper's cosine runs: the fit is the curve itself) ``T_base`` is all of its training and
``L`` its final loss, exactly the paper's appendix A; on a plateaued or noisy curve the
baseline's own first arrival at ``L`` counts, as the relative arm's does (taking the baseline's
last step instead would give a copy of the baseline a speed-up). The steps are known only to a
measuring interval: ``low`` and ``high`` bound the speed-up that interval allows, and one whose
bounds do not share a sign is no measurable difference. A relative arm that never reaches ``L`` has no
speed-up (``percent`` is ``None``), reported as such, never as 0%. Because the relative arm's
schedule has not finished decaying at ``T_relative``, the metric underestimates the gain (the
paper says so too).

``read_run(run_dir, cfg)`` parses one run's ``metrics.jsonl`` (a preset run) or the losses a
command reported with ``rlrs.report`` into a :class:`RunLogs`; ``detect_spikes`` and
``router_health`` judge it; ``mean_updates`` and ``mean_router`` average diagnostics over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .components import COMPONENTS
from .runlog import EventRecord, read_log
from .train import RunConfig, eval_steps, total_steps

# Loss-spike detection (see detect_spikes): a jump of SPIKE_Z times the step-to-step noise *and*
# of SPIKE_RISE over the recent level. Both: the z-score alone fires on a very quiet stretch, the
# ratio alone on a noisy one.
SPIKE_WINDOW = 25
SPIKE_Z = 6.0
SPIKE_RISE = 0.05

# Router collapse: over the last 10% of training the expert load's normalised entropy is below
# COLLAPSE_ENTROPY, or one expert takes more than max(COLLAPSE_SHARE, 2 / n_experts) of the tokens.
COLLAPSE_ENTROPY = 0.5
COLLAPSE_SHARE = 0.5


@dataclass(frozen=True)
class SpeedUp:
    """The paper's speed-up of one arm over the baseline (``percent``: ``None`` when the relative
    arm never reaches the target). Each arm got to the target somewhere in the measuring interval
    before the step that saw it, so the true value lies between ``low`` and ``high`` (``high`` is
    ``inf`` when the relative arm is there at its first measurement)."""

    t_base: int
    t_relative: int | None
    target_loss: float
    percent: float | None
    low: float | None = None
    high: float | None = None

    @property
    def measurable(self) -> bool:
        """Whether one measuring interval leaves no doubt about the sign: faster or slower."""
        # Each arrival lies in (the measurement before, the one that saw it]: the bounds are open.
        p = self.percent
        return p is not None and self.low is not None and ((self.low >= 0 and p > 0) or (self.high <= 0 and p < 0))

    @property
    def resolution(self) -> float:
        """Half the width of ``[low, high]`` in percent (``inf``: unbounded; 0: not measured)."""
        if self.low is None or self.high is None:
            return 0.0
        return (self.high - self.low) / 2.0

    def bounds_text(self) -> str:
        """``+50.0% to +300.0% within one measuring interval``."""
        if self.low is None or self.high is None:
            return "no bounds: not reached"
        high = "no upper bound: reached at the first measurement" if not math.isfinite(self.high) else f"{self.high:+.1f}%"
        return f"{self.low:+.1f}% to {high} within one measuring interval"

    def describe(self) -> str:
        if self.percent is None:
            return f"no speed-up: the relative arm never reaches the baseline's final loss {self.target_loss:.4f}"
        return (
            f"speed-up {self.percent:+.1f}% ({self.bounds_text()}): the relative arm reaches the "
            f"baseline's final loss {self.target_loss:.4f} at step {self.t_relative} instead of {self.t_base}"
        )


def monotone_fit(values: Sequence[float]) -> np.ndarray:
    """The least-squares non-increasing fit of ``values`` (pool adjacent violators): a falling
    curve is left as it is; a rise is pooled with what came before it into their mean.

    >>> monotone_fit([5.0, 4.0, 4.2, 3.0]).tolist()
    [5.0, 4.1, 4.1, 3.0]
    """
    return np.concatenate([np.full(n, level) for level, _, n in _pooled(values)]) if len(values) else np.zeros(0)


def _pooled(values: Sequence[float]) -> list[tuple[float, int, int]]:
    """The blocks of :func:`monotone_fit`: (level, first index, length) each."""
    blocks: list[list[float]] = []  # [sum, count] per pooled block
    for v in np.asarray(values, dtype=np.float64):
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, n = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    out, first = [], 0
    for total, n in blocks:
        out.append((total / n, first, int(n)))
        first += int(n)
    return out


def speedup(
    base_steps: Sequence[int],
    base_loss: Sequence[float],
    rel_steps: Sequence[int],
    rel_loss: Sequence[float],
) -> SpeedUp:
    """The paper's speed-up from two loss curves measured at the given steps (means over seeds),
    both read by one rule (the module's docstring): identical curves give exactly 0%.

    >>> curve = ([0, 10, 20, 30, 40], [5.0, 3.0, 2.9, 3.05, 2.95])   # noisy: it touches 2.95 early
    >>> speedup(*curve, *curve).percent
    0.0
    """
    base_steps, base_loss = _curve(base_steps, base_loss, "baseline")
    rel_steps, rel_loss = _curve(rel_steps, rel_loss, "relative")
    if not np.isfinite(base_loss[-1]):
        raise ValueError("the baseline's final loss is not finite: no speed-up can be measured")
    base = _reached(base_steps, base_loss, None)
    if base is None:
        raise ValueError("the baseline has no finite measurement after step 0: no speed-up can be measured")
    target, t_base, (base_from, base_to) = base
    rel = _reached(rel_steps, rel_loss, target)
    if rel is None:
        return SpeedUp(int(round(t_base)), None, target, None)
    _, t_rel, (rel_from, rel_to) = rel
    percent = (t_base / t_rel - 1.0) * 100.0
    # Each arm got to L after the measurement before its arrival and by the last step of the
    # (pooled) block that arrived: the speed-up lies between what those limits give.
    high = (base_to / rel_from - 1.0) * 100.0 if rel_from > 0 else math.inf
    low = (base_from / rel_to - 1.0) * 100.0
    return SpeedUp(int(round(t_base)), int(round(t_rel)), target, percent, low, high)


def _reached(steps: np.ndarray, loss: np.ndarray,
             target: float | None) -> tuple[float, float, tuple[float, float]] | None:
    """Where a curve's monotone fit first gets to ``target`` (``None``: its own final level):
    (the level, the step, (the measurement before the arriving block, its last step)), or
    ``None`` if it never does.
    A pooled block stands for its mean step: its level is the mean loss over the block, so taking
    its first step would put the arrival early by half the block (a bias against the baseline,
    whose noisy tail is the block most often pooled)."""
    # Step 0 is the initial loss, not a point of training to reach a loss at; a non-finite mean
    # (a measuring point every seed skipped) carries no information.
    keep = np.isfinite(loss) & (steps > 0)
    steps, loss = steps[keep], loss[keep]
    blocks = _pooled(loss)
    if not blocks:
        return None
    level = blocks[-1][0] if target is None else target
    for value, first, n in blocks:
        if value <= level:
            at = float(steps[first: first + n].mean())
            before = float(steps[first - 1]) if first > 0 else 0.0
            return float(value) if target is None else level, at, (before, float(steps[first + n - 1]))
    return None


def first_reaching(steps: Sequence[int], values: Sequence[float], target: float) -> int | None:
    """The first step whose value is at least ``target`` (an accuracy), or ``None`` if none is.

    >>> first_reaching([10, 20, 30], [0.5, 0.91, 0.95], 0.9), first_reaching([10], [0.5], 0.9)
    (20, None)
    """
    return next((s for s, v in zip(steps, values) if v is not None and v >= target), None)


def _curve(steps, loss, name):
    steps = np.asarray(steps, dtype=np.int64)
    loss = np.asarray(loss, dtype=np.float64)
    if steps.ndim != 1 or steps.shape != loss.shape or steps.size == 0:
        raise ValueError(f"{name}: steps and losses must be equal-length, non-empty 1-D sequences")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"{name}: steps must be strictly increasing")
    return steps, loss


def mean_curve(curves: Sequence[tuple[Sequence[int], Sequence[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and standard deviation over seeds of curves measured at the same steps."""
    if not curves:
        raise ValueError("no curves to average")
    steps = np.asarray(curves[0][0], dtype=np.int64)
    for s, _ in curves[1:]:
        if not np.array_equal(np.asarray(s), steps):
            raise ValueError("curves measured at different steps cannot be averaged")
    losses = np.asarray([np.asarray(l, dtype=np.float64) for _, l in curves])
    std = losses.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
    return steps, losses.mean(axis=0), std


@dataclass(frozen=True)
class Difference:
    """Relative minus baseline final loss, paired by data seed."""

    mean: float
    std: float  # of the paired differences (0 with one seed)
    n: int

    def describe(self) -> str:
        spread = f" ± {self.std:.4f} (std over {self.n} seeds)" if self.n > 1 else " (one seed)"
        return f"final loss relative − baseline: {self.mean:+.4f}{spread}"


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of the speed-up in percent. ``low`` is ``None`` when more than the
    interval's lower tail of resamples never reaches the baseline's final loss (no speed-up)."""

    low: float | None
    high: float | None
    level: float
    resamples: int

    def describe(self) -> str:
        lo = "no speed-up" if self.low is None else f"{self.low:+.1f}%"
        hi = "no speed-up" if self.high is None else f"{self.high:+.1f}%"
        return f"{self.level:.0%} interval [{lo}, {hi}] (bootstrap over seeds, {self.resamples} resamples)"


def bootstrap_speedup(
    base_curves: Sequence[tuple[Sequence[int], Sequence[float]]],
    rel_curves: Sequence[tuple[Sequence[int], Sequence[float]]],
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval | None:
    """A paired percentile bootstrap of the speed-up over seeds: the seeds are resampled with
    replacement, the same seeds for both arms (seed i of each saw the same data), and the
    speed-up of the resampled mean curves is measured. ``None`` with fewer than 2 paired seeds.

    >>> base = [([0, 10, 20], [5.0, 4.0, 3.0]), ([0, 10, 20], [5.0, 4.1, 3.1])]
    >>> rel = [([0, 10, 20], [5.0, 2.9, 2.5]), ([0, 10, 20], [5.0, 3.0, 2.6])]
    >>> bootstrap_speedup(base, rel).describe()
    '95% interval [+100.0%, +100.0%] (bootstrap over seeds, 2000 resamples)'
    """
    k = len(base_curves)
    if k < 2 or len(rel_curves) != k:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, k, size=k)
        bs, bm, _ = mean_curve([base_curves[i] for i in idx])
        rs, rm, _ = mean_curve([rel_curves[i] for i in idx])
        sp = speedup(bs, bm, rs, rm)
        values.append(-math.inf if sp.percent is None else sp.percent)
    # "lower"/"higher": no interpolation, which has no meaning next to a resample with no speed-up (-inf).
    lo = np.percentile(values, 50 * (1 - level), method="lower")
    hi = np.percentile(values, 50 * (1 + level), method="higher")
    return Interval(float(lo) if math.isfinite(lo) else None, float(hi) if math.isfinite(hi) else None, level, resamples)


def paired_difference(base_final: Sequence[float], rel_final: Sequence[float]) -> Difference:
    """Final-loss difference with its spread; seeds are paired by position (the same data seed)."""
    b = np.asarray(base_final, dtype=np.float64)
    r = np.asarray(rel_final, dtype=np.float64)
    if b.shape != r.shape or b.size == 0:
        raise ValueError("paired_difference needs one final loss per seed in each arm")
    d = r - b
    return Difference(float(d.mean()), float(d.std(ddof=1)) if d.size > 1 else 0.0, int(d.size))


# --- what one run's logs say -------------------------------------------------------------------------


@dataclass
class Spike:
    """A loss spike: consecutive steps whose training loss jumped above the recent median."""

    start: int
    end: int
    peak_step: int
    peak_loss: float
    reference: float  # the recent level (median of the last 5 normal steps) before the spike

    @property
    def rise(self) -> float:
        return self.peak_loss / self.reference - 1.0


def detect_spikes(
    steps: Sequence[int],
    losses: Sequence[float],
    window: int = SPIKE_WINDOW,
    z: float = SPIKE_Z,
    min_rise: float = SPIKE_RISE,
) -> list[Spike]:
    """Loss spikes in a per-step training-loss series (figure 2 of the paper).

    >>> loss = [3.0 + 0.01 * (i % 3) for i in range(60)]
    >>> loss[40] = 4.0
    >>> [(s.peak_step, s.peak_loss) for s in detect_spikes(range(60), loss)]
    [(40, 4.0)]

    A point is a spike when it exceeds the recent level (median of the last 5 non-spike points)
    by ``z`` times the step-to-step noise (robust, from the previous ``window`` points, at least
    ``window // 2`` of them) *and* by ``min_rise`` of the level. Spike points stay out of the
    reference so a long spike cannot become its own baseline; spikes no more than 2 steps apart
    merge into one event.
    """
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    ref: list[float] = []
    flagged: list[tuple[int, float, float]] = []
    for s, v in zip(steps, losses):
        if not math.isfinite(v):
            continue
        recent = np.asarray(ref[-window:])
        if recent.size >= max(3, window // 2):
            # Level: the median of the last 5 points (little lag on a falling curve). Noise: the
            # MAD of first differences, which a slow trend hardly inflates (a plain MAD would).
            level = float(np.median(recent[-5:]))
            d = np.diff(recent)
            noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2.0)
            if v > level + z * noise and v > level * (1.0 + min_rise):
                flagged.append((int(s), float(v), level))
                continue
        ref.append(float(v))
    spikes: list[Spike] = []
    for s, v, med in flagged:
        last = spikes[-1] if spikes else None
        if last is not None and s - last.end <= 2:
            last.end = s
            if v > last.peak_loss:
                last.peak_step, last.peak_loss = s, v
        else:
            spikes.append(Spike(s, s, s, v, med))
    return spikes


@dataclass
class RouterCurve:
    """MoE router statistics averaged over each 1% of training (NaN where a window has none)."""

    steps: np.ndarray
    load_entropy: np.ndarray  # normalised: 1 = perfectly balanced
    max_load: np.ndarray  # the largest expert's share of token slots
    dropped_share: np.ndarray  # share of token slots dropped for capacity


@dataclass
class UpdateCurves:
    """Per-component ‖ΔW‖/‖W‖, update RMS, representation change ‖ΔY‖/‖Y‖ and its alignment
    ratio α_ΔW/α_W (Kosson et al. 2025, arXiv 2510.19093: ‖ΔY‖/‖Y‖ = α_ΔW/α_W · ‖ΔW‖/‖W‖), NaN
    where a run did not log them (norms, compiled runs, older runs), at the steps where the
    trainer measured them."""

    steps: np.ndarray
    update_ratio: dict[str, np.ndarray]
    update_rms: dict[str, np.ndarray]
    rep_change: dict[str, np.ndarray] = field(default_factory=dict)
    align_ratio: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class RunLogs:
    """What a run's ``metrics.jsonl`` holds, on the 1% measuring points where that applies."""

    eval_steps: np.ndarray
    eval_loss: np.ndarray
    train_steps: np.ndarray  # every step that updated (skipped steps have no loss)
    train_loss: np.ndarray
    window_steps: np.ndarray  # the 1% points; train loss and router stats averaged over each 1%
    window_loss: np.ndarray
    components: list[str]
    updates: UpdateCurves
    router: RouterCurve | None

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.eval_steps, self.eval_loss) if metric == "eval" else (self.window_steps, self.window_loss)

    def blowup(self, metric: str = "eval") -> str | None:
        """Why a run that "finished" must count as diverged, or ``None``. A run that ends above
        its loss before training learned nothing (too high an LR often does that without ever
        producing a NaN); one whose last measured loss is not finite has no final loss."""
        if not self.eval_loss.size:
            return None
        final, first = self.eval_loss[-1], self.eval_loss[0]
        measured = self.curve(metric)[1]
        if not math.isfinite(final) or final > first:
            return f"finished, but its final eval loss {final:.4f} is above its initial {first:.4f}"
        if not measured.size or not math.isfinite(measured[-1]):
            return f"finished, but its final {metric} loss is not finite (every last step skipped?)"
        return None


def read_run(out: str | Path, cfg: RunConfig | None = None) -> RunLogs:
    """Parse a run's logs (complete or cut short by a divergence). ``cfg`` is the run config of
    a preset run; a command's run (``None``) has only the eval losses its script reported."""
    log = read_log(out)
    eval_x, eval_y = log.eval_curve()
    train = log.train
    losses = [r for r in train if r.loss is not None]
    if cfg is not None:
        points = [p for p in eval_steps(total_steps(cfg), cfg.train.eval_interval) if p > 0]
    else:
        points = [p for p in eval_x if p > 0]
    step_of = np.asarray([r.step for r in train], dtype=np.int64)
    window = np.searchsorted(np.asarray(points), step_of, side="left")  # window j: after point j-1, up to j
    last = int(step_of.max()) if step_of.size else 0
    xs = np.asarray([p for p in points if p <= last], dtype=np.int64)

    def window_mean(key: str, scale: float = 1.0) -> np.ndarray:
        # Every point the run got to, NaN where a window holds only skipped steps: the seeds of an
        # arm must share their measuring points to be averaged.
        vals = np.asarray([r.value(key) for r in train], dtype=np.float64) * scale
        ys = []
        for j in range(len(xs)):
            v = vals[(window == j) & np.isfinite(vals)]
            ys.append(v.mean() if v.size else math.nan)
        return np.asarray(ys, dtype=np.float64)

    components = sorted({c for r in log.records[:3] if not isinstance(r, EventRecord) for c in r.lr},
                        key=lambda c: COMPONENTS.index(c) if c in COMPONENTS else len(COMPONENTS))
    diag = [r for r in train if any(k.startswith("update_ratio/") for k in r.metrics)]

    def per_component(key: str) -> dict[str, np.ndarray]:
        return {c: np.asarray([r.value(f"{key}/{c}") for r in diag], dtype=np.float64) for c in components}

    align_weight = per_component("align_weight")  # α_W, the denominator of the alignment ratio
    router = None
    if cfg is not None and cfg.model.is_moe:
        seq = cfg.train.seq_len or cfg.model.seq_len
        slots = cfg.train.batch_size * seq * cfg.model.top_k * cfg.model.n_layers
        router = RouterCurve(xs, window_mean("moe/load_entropy"), window_mean("moe/max_load"),
                             window_mean("moe/dropped_tokens", 1.0 / slots))
    return RunLogs(
        eval_steps=np.asarray(eval_x, dtype=np.int64),
        eval_loss=np.asarray(eval_y, dtype=np.float64),
        train_steps=np.asarray([r.step for r in losses], dtype=np.int64),
        train_loss=np.asarray([r.loss for r in losses], dtype=np.float64),
        window_steps=xs,
        window_loss=window_mean("loss"),
        components=components,
        updates=UpdateCurves(np.asarray([r.step for r in diag], dtype=np.int64),
                             per_component("update_ratio"), per_component("update_rms"), per_component("rep_change"),
                             {c: a / align_weight[c] for c, a in per_component("align_update").items()}),
        router=router,
    )


@dataclass(frozen=True)
class RouterHealth:
    """Expert load over the last 10% of training (and its worst point) and a collapse verdict."""

    load_entropy_final: float
    load_entropy_min: float
    max_load_final: float
    max_load_peak: float
    dropped_share_final: float
    dropped_share_peak: float
    n_experts: int
    collapsed: bool
    verdict: str


def router_health(logs: RunLogs, n_experts: int) -> RouterHealth | None:
    """Judge a MoE run's router: ``None`` for a dense run or one with no router statistics."""
    r = logs.router
    if r is None or not len(r.steps):
        return None
    tail = r.steps >= 0.9 * r.steps[-1]
    if not np.isfinite(r.load_entropy[tail]).any():
        return None  # only skipped steps at the end: nothing to judge
    ent, share, drop = (float(np.nanmean(v[tail])) for v in (r.load_entropy, r.max_load, r.dropped_share))
    share_limit = max(COLLAPSE_SHARE, 2.0 / n_experts)
    problems = []
    if ent < COLLAPSE_ENTROPY:
        problems.append(f"load entropy {ent:.2f} < {COLLAPSE_ENTROPY}")
    if share > share_limit:
        problems.append(f"one expert takes {share:.0%} of the tokens")
    return RouterHealth(
        load_entropy_final=ent, load_entropy_min=float(np.nanmin(r.load_entropy)),
        max_load_final=share, max_load_peak=float(np.nanmax(r.max_load)),
        dropped_share_final=drop, dropped_share_peak=float(np.nanmax(r.dropped_share)),
        n_experts=n_experts, collapsed=bool(problems),
        verdict="collapse: " + "; ".join(problems) if problems else "healthy",
    )


# --- averaging diagnostics over seeds ----------------------------------------------------------------


def mean_updates(logs: Sequence[RunLogs]) -> UpdateCurves:
    """Update sizes averaged over runs, step by step (a run cut short counts where it has points)."""
    if not logs:
        return UpdateCurves(np.zeros(0, dtype=np.int64), {}, {})
    steps = max((lg.updates.steps for lg in logs), key=len)
    comps = logs[0].components

    def mean(key: str) -> dict[str, np.ndarray]:
        return {c: _nanmean_aligned(steps, [(lg.updates.steps, getattr(lg.updates, key).get(c)) for lg in logs])
                for c in comps}

    return UpdateCurves(steps, mean("update_ratio"), mean("update_rms"), mean("rep_change"), mean("align_ratio"))


def mean_router(logs: Sequence[RunLogs]) -> RouterCurve | None:
    """Router statistics averaged over the runs that have them (``None``: dense runs)."""
    curves = [lg.router for lg in logs if lg.router is not None]
    if not curves:
        return None
    steps = max((c.steps for c in curves), key=len)

    def mean(key: str) -> np.ndarray:
        return _nanmean_aligned(steps, [(c.steps, getattr(c, key)) for c in curves])

    return RouterCurve(steps, mean("load_entropy"), mean("max_load"), mean("dropped_share"))


def _nanmean_aligned(steps: np.ndarray, series: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    # Runs cut short by a divergence have fewer points: average what each step has.
    grid = np.full((len(series), len(steps)), np.nan)
    index = {int(s): j for j, s in enumerate(steps)}
    for i, (xs, ys) in enumerate(series):
        if ys is None:
            continue
        for x, y in zip(xs, ys):
            if int(x) in index:
                grid[i, index[int(x)]] = y
    with np.errstate(all="ignore"):
        counts = np.isfinite(grid).sum(axis=0)
        return np.where(counts > 0, np.nansum(grid, axis=0) / np.maximum(counts, 1), np.nan)
