"""``rlrs demo``: the first three minutes. A small compare that 2 CPU cores finish in under three
minutes (2 min 16 s on a busy machine, BENCHMARKS.md): the uniform baseline against the paper's
MoE plan (Ludziejewski et al., 2025, arXiv 2507.03526, table 4) on ``ladder-xs-moe`` (33k active
non-embedding parameters, 8 experts, trained to 20 tokens per parameter as in the paper), one
seed, the loss at every 2% of training.

    >>> from rlrs.experiments.demo import demo, load
    >>> res = demo("runs/demo")                 # doctest: +SKIP
    >>> res.tuned, res.compare.lines()[0]       # doctest: +SKIP
    (True, "paper-moe: speed-up +33.5%: reaches the baseline's final eval loss 3.6336 at step 245 ...")
    >>> load("runs/demo") == res                # doctest: +SKIP
    True

or ``rlrs demo``. While the runs train it prints both eval losses at every 10% of training; then
the speed-up (appendix A's metric, :mod:`rlrs.experiments.compare`), ``loss.png`` (the speed-up figure) and
the rest of compare's report in ``out``. ``demo`` is :func:`run` (trains; writes only runs),
:func:`save` and :func:`render` in one call.

**Honest η_base.** The paper tunes η_base separately for each plan, and so does the demo: on its
own setting each arm trains at the best value of its ``rlrs lr-grid`` (:data:`TUNED`). A setting
the grid did not cover (another ``steps``, a ``--set`` that changes training, another preset)
trains at the plans' own η_base, and the output, the figure and ``report.md`` say that it was not
tuned; ``tune=True`` (``--tune``) runs the grid for the setting first (several minutes).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from . import compare as _compare
from . import lr_grid as _lr_grid
from .report import plot_speedup
from .. import config as _config
from .. import files
from ..config import ConfigError
from ..runlog import read_log

PRESET = "ladder-xs-moe"
PLANS = ("uniform-moe", "paper-moe")
# Each plan's best η_base in `rlrs lr-grid` on ladder-xs-moe at its own 327 steps (the grid grew
# until the best lay inside; BENCHMARKS.md, the evidence ladder, whose 3-seed compare at these
# values measured paper-moe +37.4% [+37.4%, +46.0%]).
TUNED = {"uniform-moe": 1e-2, "paper-moe": 2e-2}
# Settings that do not change what a run learns, so they keep the tuned values valid.
NEUTRAL_SETS = ("train.threads", "train.eval_interval", "data.cache_dir")
REPORT_EVERY = 0.1  # a progress line at every 10% of training
# The loss at every 2% of training, not compare's 1%: on this model an evaluation costs several
# training steps, and 100 of them would take half the run (measured: 75 s against 52 s a run at 2.5%).
EVAL_INTERVAL = 0.02


@dataclass(frozen=True)
class Tuning:
    """Each arm's η_base and whether it was tuned for this setting, in one sentence (``note``);
    ``grid``: whether the η_base came from an lr-grid this demo ran (``--tune``)."""

    base_lrs: dict[str, float] | None  # None: each plan's own η_base
    tuned: bool
    note: str
    grid: bool = False


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run` found: the compare (speed-up, verdict), the lr-grid where ``--tune`` ran
    one, and how η_base was chosen.

    It is saved as its parts, not as one file (:func:`save`): the compare in ``results.json`` and
    the grid in ``grid.json``, each the file its own command writes (so ``rlrs compare``'s and
    ``rlrs lr-grid``'s readers, ``--base-lrs-from`` included, read a demo's ``out`` as theirs), and
    what the demo adds, :class:`Tuning`, in ``demo.json`` (``rlrs.config.to_dict`` of it).
    :func:`load` puts them back together."""

    compare: _compare.CompareResult
    tuning: Tuning
    grid: _lr_grid.GridResult | None = None

    @property
    def tuned(self) -> bool:
        return self.tuning.tuned


def stored_tuning(preset: str, steps: int | None, sets: Mapping[str, Any]) -> Tuning:
    """The η_base of :data:`TUNED` where the demo runs the setting it was tuned on; otherwise each
    plan's own η_base, said to be untuned.

    >>> stored_tuning("ladder-xs-moe", None, {}).tuned
    True
    >>> stored_tuning("ladder-xs-moe", 100, {}).note
    'η_base NOT tuned for this setting (100 steps): each plan at its own η_base; --tune tunes it (an lr-grid, several minutes)'
    """
    changed = [k for k in sets if k not in NEUTRAL_SETS]
    why = []
    if preset != PRESET:
        why.append(f"preset {preset}, tuned on {PRESET}")
    if steps is not None and steps != _default_steps(preset):
        why.append(f"{steps} steps")
    if changed:
        why.append("--set " + ", ".join(changed))
    if why:
        return Tuning(None, False, f"η_base NOT tuned for this setting ({'; '.join(why)}): each plan at its own "
                                   "η_base; --tune tunes it (an lr-grid, several minutes)")
    lrs = ", ".join(f"{arm} {lr:g}" for arm, lr in TUNED.items())
    return Tuning(dict(TUNED), True, f"η_base tuned per plan: {lrs} (the best of an lr-grid on this setting)")


def _default_steps(preset: str) -> int:
    from ..train import run_config, total_steps

    return total_steps(run_config(preset))


def grid_tuning(grid: _lr_grid.GridResult) -> Tuning:
    """Each arm at the best η_base of ``grid``; untuned where an arm's best sits at an edge of
    its grid or every value diverged."""
    bad = [f"{arm}: every value diverged" for arm in grid.arms if arm not in grid.best]
    bad += [f"{arm}: at the {edge} edge of its grid" for arm, edge in grid.edge.items() if edge and arm in grid.best]
    lrs = ", ".join(f"{arm} {lr:g}" for arm, lr in grid.best.items())
    if bad:
        return Tuning(dict(grid.best), False, f"η_base NOT fully tuned ({'; '.join(bad)}): {lrs}", grid=True)
    return Tuning(dict(grid.best), True, f"η_base tuned per plan: {lrs} (the best of the lr-grid just run)", grid=True)


def run(
    out: str | Path,
    *,
    steps: int | None = None,
    sets: Mapping[str, Any] | None = None,
    tune: bool = False,
    workers: int | None = None,
    preset: str = PRESET,
    progress: bool = True,
    log: Callable[[str], None] = print,
    executor=None,
) -> DemoResult:
    """Train :data:`PLANS` on ``preset`` (one seed) into ``out/runs`` and measure the speed-up;
    print the eval losses while they train (``progress``). ``steps``: the length (default: the
    preset's 20 tokens per parameter); ``sets``: settings of both runs; ``tune``: run an lr-grid
    first (:func:`rlrs.experiments.lr_grid.run`, its runs beside compare's). Writes only runs (and
    the tokenized corpus's cache): :func:`save` and :func:`render` write the files."""
    out = Path(out)
    sets = dict(sets or {})
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ConfigError(f"steps: at least 2, got {steps!r}; or leave it out for the preset's own length")
        sets["train.steps"] = steps
    sets.setdefault("train.eval_interval", EVAL_INTERVAL)
    total = _prepare_data(preset, sets)
    t0 = time.perf_counter()
    grid = None
    if tune:
        log(f"rlrs demo: tuning η_base first: rlrs lr-grid on {preset} ({', '.join(PLANS)}), several minutes")
        grid = _lr_grid.run(preset, PLANS, out, points=3, sets=sets, workers=workers, log=log, executor=executor)
        tuning = grid_tuning(grid)
    else:
        tuning = stored_tuning(preset, steps, {k: v for k, v in sets.items() if k != "train.steps"})
    dirs = _compare.run_dirs(preset, PLANS, 1, out, sets=sets, base_lrs=tuning.base_lrs)
    log(tuning.note)
    watch = _Watch(dirs, total, log, t0) if progress else None
    try:
        res = _compare.run(preset, PLANS, seeds=1, out=out, sets=sets, base_lrs=tuning.base_lrs, workers=workers,
                           log=log, command=None, executor=executor, progress=False)
    finally:
        if watch is not None:
            watch.stop()
    return DemoResult(res, tuning, grid)


def save(result: DemoResult, out: str | Path) -> Path:
    """Write ``out/results.json`` (the compare), ``out/grid.json`` (the lr-grid, where one ran)
    and ``out/demo.json`` (the :class:`Tuning`); returns ``demo.json``'s path."""
    out = files.make_dir(out)
    if result.grid is not None:
        _lr_grid.save(result.grid, out)
    _compare.save(result.compare, out)
    path = out / "demo.json"
    files.write_json(path, _config.to_dict(result.tuning))
    return path


def load(path: str | Path) -> DemoResult:
    """The :class:`DemoResult` in a demo's ``out`` (or its ``demo.json``): ``demo.json``, the
    compare's ``results.json`` beside it and, where the demo tuned, ``grid.json``. Demos of
    earlier versions wrote no ``demo.json``: their ``results.json`` loads with
    :func:`rlrs.experiments.compare.load`."""
    path = Path(path)
    out = path if path.is_dir() else path.parent
    record = out / "demo.json"
    if not record.exists():
        raise FileNotFoundError(f"{record}: no demo result here; run `rlrs demo --out {out}` first (its runs are "
                                "reused); a compare's results.json alone loads with rlrs.experiments.compare.load")
    tuning = _config.load_typed(Tuning, record, "demo.json", "rlrs demo", "demo result")
    return DemoResult(_compare.load(out), tuning, _lr_grid.load(out) if tuning.grid else None)


def render(result: DemoResult, out: str | Path) -> list[Path]:
    """Write the lr-grid's report (where one ran: ``grid.md``, ``lr_grid.png``) and the compare's
    (:func:`rlrs.experiments.compare.render`: ``report.md`` and its figures, the training losses
    read from the runs' own logs), then the demo's own: ``loss.png`` with how η_base was chosen
    under the title, and ``report.md`` opened by the same sentence."""
    out = files.make_dir(out)
    paths = _lr_grid.render(result.grid, out) if result.grid is not None else []
    paths += _compare.render(result.compare, out)
    plot_speedup(result.compare, out / "loss.png", note=result.tuning.note)
    report = out / "report.md"
    files.atomic_write_text(report, f"**rlrs demo**: one seed; {result.tuning.note}.\n\n" + report.read_text())
    return paths


def demo(out: str | Path = "runs/demo", **options) -> DemoResult:
    """What ``rlrs demo`` does, in one call: :func:`run` (``options`` are its keywords), then
    :func:`save` and :func:`render` into ``out``."""
    result = run(out, **options)
    save(result, out)
    render(result, out)
    return result


def _prepare_data(preset: str, sets: Mapping[str, Any]) -> int:
    """Tokenize the corpus once here (two runs starting at once on a fresh cache would each build
    it); returns the runs' length in steps."""
    from .. import data
    from ..train import run_config, total_steps

    cfg = run_config(preset, None, sets=sets)
    data.prepare(cfg.data)
    return total_steps(cfg)


class _Watch:
    """Prints every arm's eval loss at each 10% of training, read from the runs' logs while they
    train (the runs live in other processes)."""

    def __init__(self, dirs: Mapping[tuple[str, int], Path], total: int, log: Callable[[str], None], t0: float):
        self.dirs, self.total, self.log, self.t0 = dirs, total, log, t0
        self.arms = [arm for arm, _ in dirs]
        self.width = max(len(a) for a in self.arms)
        self.done: set[int] = set()
        self.header = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()  # the points of runs that ended between two looks

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            self.poll()

    def poll(self) -> None:
        curves = {}
        total = self.total
        for (arm, _seed), d in self.dirs.items():
            steps, losses = read_log(d).eval_curve()
            curves[arm] = dict(zip(steps, losses))
        for k in range(int(round(1 / REPORT_EVERY)) + 1):
            if k in self.done:
                continue
            at = k * REPORT_EVERY * total
            first = [min((s for s in c if s >= at), default=None) for c in curves.values()]
            if any(s is None for s in first):
                return
            step = first[0]
            if k == int(round(1 / REPORT_EVERY)) or any(s != step or step not in c for s, c in zip(first, curves.values())):
                self.done.add(k)  # the final losses come with the result; a mismatch shows nothing
                continue
            if not self.header:
                self.log(f"  {'step':>9}   eval loss:  " + "  ".join(f"{a:>{self.width}}" for a in self.arms))
                self.header = True
            losses = "  ".join(f"{curves[a][step]:>{self.width}.4f}" for a in self.arms)
            self.log(f"  {step:>4}/{total:<4}               {losses}   ({time.perf_counter() - self.t0:.0f} s)")
            self.done.add(k)


# --- command line -----------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs demo``."""
    from ..options import (add_executor_args, add_no_progress_arg, add_out_arg, add_set_arg, add_steps_arg,
                           add_workers_arg, default_of)

    p = sub.add_parser(
        "demo", help=f"the first three minutes: {PLANS[0]} against {PLANS[1]} on {PRESET}, the speed-up and its plot",
        description=f"Train {PRESET} on Shakespeare with the uniform baseline and the paper's MoE plan (one seed, "
                    "each at its own tuned η_base), print both eval losses as they train, then the paper's speed-up; "
                    "writes loss.png (the speed-up plot), report.md, results.json and demo.json into --out. Under three "
                    "minutes on 2 CPU cores. Another --steps or a --set that changes training trains at untuned "
                    "η_base unless --tune.")
    add_out_arg(p, default_of(demo, "out"))
    add_steps_arg(p, default_of(run, "steps"))
    p.add_argument("--tune", action="store_true",
                   help="tune each plan's η_base for this setting first (rlrs lr-grid, 3 values and more at an edge; "
                        "several minutes)")
    add_workers_arg(p)
    add_set_arg(p)
    add_no_progress_arg(p)
    add_executor_args(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..engine import reason_line
    from ..options import executor_from_args, parse_sets

    out = Path(args.out)
    t0 = time.perf_counter()
    with executor_from_args(args, out / "slurm") as ex:
        res = run(out, steps=args.steps, sets=parse_sets(args.set), tune=args.tune, workers=args.workers,
                  progress=not args.no_progress, executor=ex)
    save(res, out)
    render(res, out)
    c = res.compare
    print()
    base = c.arms[c.baseline]
    for name, arm in c.arms.items():
        if arm.final_loss is None:
            continue
        diff = "" if name == c.baseline or base.final_loss is None else f"  ({arm.final_loss.mean - base.final_loss.mean:+.4f})"
        print(f"{name:>12}  final eval loss {arm.final_loss.mean:.4f}{diff}")
    for line in c.lines():
        print(line)
    for r in c.runs:
        if r.status != "finished":
            print(f"{r.arm}: {r.status}: {reason_line(r.status, r.error)}")
    print(res.tuning.note)
    print(f"One seed shows the effect; `rlrs compare --model {c.preset} --seeds 3` measures it with an interval over seeds.")
    print(f"speed-up plot: {out / 'loss.png'}   report: {out / 'report.md'}   ({time.perf_counter() - t0:.0f} s)")
    return 0 if all(r.status == "finished" for r in c.runs) else 1
