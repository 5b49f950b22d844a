"""``rlrs zoo``: learning-rate strategies × tasks × seeds, on the run engine (the comparison of
the DALS paper, arXiv 2604.27295, with error bars).

    $ rlrs zoo --list
    $ rlrs zoo --tasks gauss,digits --strategies all --seeds 3 --out runs/zoo

or from Python::

    >>> from rlrs.experiments.zoo import load, parse_names, run_zoo
    >>> res = run_zoo(["gauss"], ["adamw", "dals"], "runs/zoo", seeds=3)          # doctest: +SKIP
    >>> load("runs/zoo").cell("dals", "gauss").accuracy_mean                       # doctest: +SKIP
    0.951
    >>> parse_names("adamw,dals", {"adamw": 1, "dals": 2, "sgdr": 3}, "strategies")
    ['adamw', 'dals']

``run_zoo`` is :func:`run` (trains, writes only runs), :func:`save` (``results.json``: the
:class:`ZooResult`) and :func:`render` (``report.md``, ``zoo_curves.png``) in one call; ``rlrs
zoo --merge`` is :func:`load` of each input, :func:`merge`, :func:`save` and :func:`render`.

Every (task, strategy, seed) is one run of the engine under ``OUT/runs/`` (reused when finished,
run again when it failed; a diverged run is kept and reported as diverged). ``results.json``
holds, per strategy and task, the final accuracy and eval loss (mean ± std over seeds), how many
seeds reached the task's target accuracy and after how many steps and seconds (mean over those
that did), and the failures. ``report.md`` has the cross-task table (accuracy, with each task's
rank), the per-task tables, and ``zoo_curves.png`` the mean accuracy curves per task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import config as _config
from .. import files
from ..analysis import first_reaching
from ..config import ConfigError
from ..engine import Job, eval_curve, reusable, run_all, run_dir
from ..options import (add_executor_args, add_out_arg, add_renamed, add_seeds_arg, add_workers_arg,
                       default_of, executor_from_args)
from ..plots import _save
from ..zoo.strategies import GENERATIONS, STRATEGIES
from ..zoo.tasks import TASKS, TaskRun


def parse_names(text: str, valid: Mapping[str, object], what: str) -> list[str]:
    """``"a,b"`` (or ``"all"``) to a list of names from ``valid``; an unknown one names the closest."""
    if text.strip() == "all":
        return list(valid)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--{what}: empty; give names separated by commas, or all")
    for n in names:
        if n not in valid:
            raise ConfigError(f"--{what}: {n!r} is unknown; {_config.closest(n, list(valid))}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Cell:
    """One strategy on one task, over its seeds."""

    strategy: str
    task: str
    seeds: int
    finished: int
    diverged: int
    failed: int
    accuracy_mean: float | None
    accuracy_std: float | None
    loss_mean: float | None
    loss_std: float | None
    target: float
    reached: int  # seeds whose accuracy reached the target
    steps_to_target: float | None  # mean over the seeds that reached it
    seconds_to_target: float | None
    wall_s: float
    errors: tuple[str, ...] = ()
    applicable: bool = True  # False: the strategy does not apply to the task (no runs)
    runs: tuple[str, ...] = ()  # the finished runs' directories
    accuracies: tuple[float, ...] = ()  # each finished seed's final accuracy

    @property
    def complete(self) -> bool:
        """Every seed finished: only such cells are ranked against each other first."""
        return self.applicable and self.finished == self.seeds

    @property
    def status(self) -> str:
        if not self.applicable:
            return "n/a"
        if self.finished == self.seeds:
            return "finished"
        return "diverged" if self.diverged else "failed" if self.failed else "incomplete"


@dataclass(frozen=True)
class ZooResult:
    """Every cell of a zoo run: ``results.json`` is ``rlrs.config.to_dict`` of it, and
    ``rlrs.config.from_dict(ZooResult, json.load(f))`` (:func:`load`) reads it back."""

    tasks: tuple[str, ...]
    strategies: tuple[str, ...]
    seeds: int
    epochs: int | None
    wall_s: float
    cells: tuple[Cell, ...]
    merged_from: tuple[str, ...] = ()  # the results.json files merge combined

    def cell(self, strategy: str, task: str) -> Cell:
        for c in self.cells:
            if c.strategy == strategy and c.task == task:
                return c
        raise ConfigError(f"no cell for strategy {strategy!r} on task {task!r}; this result has strategies "
                          f"{', '.join(self.strategies)} and tasks {', '.join(self.tasks)}")


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation; the deviation is ``None`` for fewer than 2 values."""
    if not values:
        return None, None
    a = np.asarray(values, dtype=float)
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else None)


def _no_runs(strategy: str, task: str, seeds: int, failed: int = 0, errors: Sequence[str] = (),
             applicable: bool = True) -> Cell:
    """The cell of a strategy that has no finished run on ``task``: not applicable, or its task failed."""
    return Cell(strategy, task, seeds, 0, 0, failed, None, None, None, None, TASKS[task].target, 0, None, None, 0.0,
                tuple(errors), applicable)


def run(tasks: Sequence[str], strategies: Sequence[str], out: str | Path, *, seeds: int = 3, epochs: int | None = None,
        workers: int | None = None, log: Callable[[str], None] | None = print, progress: bool = False,
        executor=None) -> ZooResult:
    """Train every strategy on every task with ``seeds`` seeds (0, 1, ...) into ``out/runs`` and
    summarize; :func:`save` and :func:`render` write ``results.json``, ``report.md`` and
    ``zoo_curves.png``, :func:`run_zoo` all three. ``executor`` (:mod:`rlrs.executors`) runs the
    runs instead of a local pool of ``workers``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds: at least 1, got {seeds!r}")
    tasks = parse_names(",".join(tasks), TASKS, "task")
    strategies = parse_names(",".join(strategies), STRATEGIES, "strategies")
    out = Path(out)
    files.make_dir(out, "--out")
    t0 = time.perf_counter()
    jobs = []
    for task in tasks:
        for name in strategies:
            if not STRATEGIES[name].applies_to(task):
                continue
            for seed in range(seeds):
                spec = TaskRun(task, STRATEGIES[name], seed, epochs)
                jobs.append(Job(spec, run_dir(out / "runs", spec), label=f"{task} {name} seed {seed}"))
    if log:
        log(f"rlrs zoo: {len(strategies)} strategies x {len(tasks)} tasks x {seeds} seeds -> {out}")
    unfetched: dict[str, str] = {}
    for task in tasks:  # downloads and token caches once, here, not by every worker at once
        todo = [j for j in jobs if j.spec.task == task and not reusable(j.out)]
        if TASKS[task].fetch is not None and todo:
            try:
                TASKS[task].fetch()
            except Exception as err:  # noqa: BLE001 - the task's cells record it; the other tasks run
                unfetched[task] = f"{type(err).__name__}: {err}"
                if log:
                    log(f"rlrs zoo: task {task} cannot run: {unfetched[task]}")
    jobs = [j for j in jobs if j.spec.task not in unfetched]
    results = run_all(jobs, workers, log, progress=progress, executor=executor)
    cells = []
    for task in tasks:
        target = TASKS[task].target
        for name in strategies:
            if not STRATEGIES[name].applies_to(task):
                cells.append(_no_runs(name, task, seeds, applicable=False))
                continue
            if task in unfetched:
                cells.append(_no_runs(name, task, seeds, failed=seeds, errors=[unfetched[task]]))
                continue
            mine = [(j, r) for j, r in zip(jobs, results) if j.spec.task == task and j.spec.strategy.name == name]
            done = [r for _, r in mine if r.status == "finished"]
            accs, reach_steps, reach_s = [], [], []
            for r in done:
                steps, acc = eval_curve(r.out, "accuracy")
                accs.append(acc[-1])
                _, wall = eval_curve(r.out, "wall_s")
                at = first_reaching(steps, acc, target)
                if at is not None:
                    reach_steps.append(at)
                    reach_s.append(wall[steps.index(at)])
            am, asd = _mean_std(accs)
            lm, lsd = _mean_std([r.final_eval_loss for r in done if r.final_eval_loss is not None])
            cells.append(Cell(
                name, task, seeds, len(done), sum(r.status == "diverged" for _, r in mine),
                sum(r.status == "failed" for _, r in mine), am, asd, lm, lsd, target, len(reach_steps),
                _mean_std(reach_steps)[0], _mean_std(reach_s)[0],
                float(np.mean([r.wall_s for r in done])) if done else 0.0,
                tuple(f"seed {j.spec.seed}: {r.headline()}" for j, r in mine if r.status not in ("finished",)),
                runs=tuple(str(r.out) for r in done), accuracies=tuple(float(a) for a in accs)))
    return ZooResult(tuple(tasks), tuple(strategies), seeds, epochs, time.perf_counter() - t0, tuple(cells))


def merge(results: Mapping[str, ZooResult]) -> ZooResult:
    """One :class:`ZooResult` of several zoo runs on different tasks (e.g. measured in different
    sessions or on different machines), for one cross-task table; ``results`` maps the
    ``results.json`` each was read from (``merged_from`` lists them) to it. Each task must come
    from one input, and all inputs must have the same seeds and epochs. A strategy an input did
    not run is "n/a" on that input's tasks when it does not apply to them, and an error when it does.

        >>> merge({})
        Traceback (most recent call last):
        ...
        rlrs.config.ConfigError: --merge: give at least two results.json files
    """
    if len(results) < 2:
        raise ConfigError("--merge: give at least two results.json files")
    (first_name, first), *_ = results.items()
    owner: dict[str, str] = {}
    for name, r in results.items():
        if (r.seeds, r.epochs) != (first.seeds, first.epochs):
            raise ConfigError(f"--merge: {name} has {r.seeds} seeds and epochs {r.epochs}, {first_name} has "
                              f"{first.seeds} and {first.epochs}; merge results measured the same way")
        for t in r.tasks:
            if t in owner:
                raise ConfigError(f"--merge: task {t} is in both {owner[t]} and {name}; merge each task once")
            owner[t] = name
    strategies = tuple(dict.fromkeys(s for r in results.values() for s in r.strategies))
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ConfigError(f"--merge: strategy {unknown[0]!r} is not in this rlrs's registry; "
                          f"{_config.closest(unknown[0], list(STRATEGIES))}")
    cells = []
    for t, name in owner.items():
        r = results[name]
        for s in strategies:
            if s in r.strategies:
                cells.append(r.cell(s, t))
            elif not STRATEGIES[s].applies_to(t):
                cells.append(_no_runs(s, t, r.seeds, applicable=False))
            else:
                raise ConfigError(f"--merge: strategy {s} did not run on task {t} in {name}; run it there "
                                  f"(rlrs zoo --tasks {t} --strategies {s} --out {Path(name).parent}) before merging")
    return ZooResult(tuple(owner), strategies, first.seeds, first.epochs, sum(r.wall_s for r in results.values()),
                     tuple(cells), tuple(results))


def save(result: ZooResult, out: str | Path) -> Path:
    """Write ``out/results.json``."""
    path = files.make_dir(out, "--out") / "results.json"
    files.write_json(path, _config.to_dict(result))
    return path


def results_file(path: str | Path) -> Path:
    """The ``results.json`` that ``path`` names: the file itself, or the one in the directory."""
    path = Path(path)
    return path / "results.json" if path.is_dir() else path


def load(path: str | Path) -> ZooResult:
    """The :class:`ZooResult` in a zoo's ``results.json`` (or the directory holding it), files of
    earlier versions included. The runs' directories it names are kept as written; they need not
    exist to report on it."""
    def upgrade(doc: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(doc.get("cells"), list):
            return doc
        # Files written before the result was typed held each cell's status, which is derived.
        return {**doc, "cells": [{k: v for k, v in c.items() if k != "status"} if isinstance(c, dict) else c
                                 for c in doc["cells"]]}

    return _config.load_typed(ZooResult, results_file(path), "results.json", "rlrs zoo", "zoo result", upgrade)


def load_results(path: str | Path) -> ZooResult:
    """The earlier name of :func:`load` (``benchmarks/zoo_finetune.py`` calls it)."""
    return load(path)


def run_zoo(tasks: Sequence[str], strategies: Sequence[str], out: str | Path, seeds: int = 3,
            epochs: int | None = None, workers: int | None = None, log: Callable[[str], None] | None = print,
            executor=None) -> ZooResult:
    """What ``rlrs zoo`` does, in one call: :func:`run`, then :func:`save` and :func:`render` into ``out``."""
    result = run(tasks, strategies, out, seeds=seeds, epochs=epochs, workers=workers, log=log, executor=executor)
    save(result, out)
    render(result, out)
    return result


# --- report -------------------------------------------------------------------------------------


def render(result: ZooResult, out: str | Path) -> list[Path]:
    """Write ``report.md`` and ``zoo_curves.png`` into ``out``. The curves are read from the runs'
    own logs in the run directories the cells name; the figure is left out when matplotlib is not
    installed, and for a merged result (its curves are in each input's own figure)."""
    out = files.make_dir(out, "--out")
    png = None if result.merged_from else plot(result, out / "zoo_curves.png")
    md = out / "report.md"
    files.atomic_write_text(md, markdown(result, png))
    return [md] if png is None else [png, md]


def accuracy_text(c: Cell) -> str:
    """A cell's accuracy as the tables print it: ``"92.1 ± 0.7"`` (%), with the status when a seed did not finish."""
    if c.accuracy_mean is None:
        return c.status
    spread = "n=1" if c.accuracy_std is None else f"± {100 * c.accuracy_std:.1f}"
    s = f"{100 * c.accuracy_mean:.1f} {spread}"
    return s + (f" ({c.status}: {c.finished}/{c.seeds} finished)" if c.finished < c.seeds else "")


def ranks(res: ZooResult, task: str) -> dict[str, int]:
    """Each applicable strategy's rank on ``task`` by mean accuracy (1 = best). Cells where some
    seed diverged or failed rank after every complete cell, whatever their survivors scored."""
    cells = sorted((c for s in res.strategies if (c := res.cell(s, task)).applicable),
                   key=lambda c: (not c.complete, -(c.accuracy_mean if c.accuracy_mean is not None else -1.0)))
    return {c.strategy: i + 1 for i, c in enumerate(cells)}


def markdown(res: ZooResult, png: Path | None = None) -> str:
    """``report.md``: the cross-task table first, then one table per task; ``png`` is the curves'
    figure it links (none: no link)."""
    rk = {t: ranks(res, t) for t in res.tasks}
    lines = [
        "# rlrs zoo", "",
        f"{len(res.strategies)} strategies × {len(res.tasks)} tasks × {res.seeds} seeds; final test accuracy "
        f"(%, mean ± std over seeds) and rank per task; a cell where a seed diverged or failed ranks "
        f"after the complete ones. The mean rank is over the tasks a strategy applies to (their "
        f"number in brackets). Wall time {res.wall_s:.0f} s.", "",
        *([f"Merged from {', '.join(res.merged_from)} (their curves are in each one's zoo_curves.png).", ""]
          if res.merged_from else []),
        "| strategy | gen | " + " | ".join(res.tasks) + " | mean rank |",
        "|---|---|" + "---|" * len(res.tasks) + "---|",
    ]
    def mean_rank(s: str) -> float:
        return float(np.mean([rk[t][s] for t in res.tasks if s in rk[t]] or [np.inf]))

    for s in sorted(res.strategies, key=mean_rank):
        st = STRATEGIES[s]
        if not any(s in rk[t] for t in res.tasks):
            continue  # applies to none of these tasks (the fine-tuning ones on a task without an encoder)
        cols = [f"{accuracy_text(res.cell(s, t))} (#{rk[t][s]})" if s in rk[t] else "n/a" for t in res.tasks]
        n = sum(s in rk[t] for t in res.tasks)
        lines.append(f"| {st.title} | {st.generation} | " + " | ".join(cols) + f" | {mean_rank(s):.1f} ({n} task{'s' * (n != 1)}) |")
    for t in res.tasks:
        task = TASKS[t]
        lines += ["", f"## {t}", "", task.summary, "",
                  f"| strategy | accuracy % | eval loss | seeds reaching {100 * task.target:.0f}% | steps to it | seconds to it |",
                  "|---|---|---|---|---|---|"]
        for s in sorted(rk[t], key=lambda s: rk[t][s]):
            c = res.cell(s, t)
            loss = "—" if c.loss_mean is None else f"{c.loss_mean:.3f} " + (
                "n=1" if c.loss_std is None else f"± {c.loss_std:.3f}")
            lines.append(f"| {STRATEGIES[s].title} | {accuracy_text(c)} | {loss} | {c.reached}/{c.seeds} | "
                         f"{'—' if c.steps_to_target is None else f'{c.steps_to_target:.0f}'} | "
                         f"{'—' if c.seconds_to_target is None else f'{c.seconds_to_target:.1f}'} |")
    bad = [(c, e) for c in res.cells for e in c.errors]
    if bad:
        lines += ["", "## Runs that did not finish", ""] + [f"- {c.task} {c.strategy} {e}" for c, e in bad]
    if png is not None:
        lines += ["", f"![accuracy curves]({png.name})"]
    return "\n".join(lines) + "\n"


def plot(res: ZooResult, path: str | Path) -> Path | None:
    """The mean test accuracy curve of each strategy, one panel per task, read from the runs' logs
    (``None``: matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(res.tasks), figsize=(6 * len(res.tasks), 4.5), squeeze=False, layout="constrained")
    for ax, t in zip(axes[0], res.tasks):
        for s in res.strategies:
            curves = [eval_curve(Path(d), "accuracy") for d in res.cell(s, t).runs]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            ax.plot(curves[0][0][:n], np.mean([c[1][:n] for c in curves], axis=0), label=STRATEGIES[s].title, lw=1)
        ax.set_title(t)
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        lo = min((c.accuracy_mean for c in res.cells if c.task == t and c.accuracy_mean is not None), default=0.0)
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:  # no curves when the runs' folders are gone
        # Under the panels, not over any of them: two dozen strategies cover a panel's curves.
        fig.legend(handles, labels, fontsize=7, ncol=min(6, len(labels)), loc="outside lower center", frameon=False)
    return _save(fig, path, dpi=110)



def listing() -> str:
    """Every strategy with its generation, optimizer and paper (``rlrs zoo --list``)."""
    rows = [f"{'strategy':<22}{'gen':<5}{'η':<8}{'optimizer':<24}paper"]
    for s in STRATEGIES.values():
        opt = s.optimizer + (" + lookahead" if s.lookahead else "") + (" + SAM" if s.sam_rho else "") + (
            " + grokfast" if s.grokfast else "") + (" + LoRA" if s.lora else "") + (" + freeze" if s.freeze else "")
        only = f" [only {', '.join(s.tasks)}]" if s.tasks is not None else ""
        rows.append(f"{s.name:<22}{s.generation:<5}{s.plan.base_lr:<8g}{opt:<24}{s.title}: {s.paper}{only}")
    scaled = [f"{t.name} × {t.lr_scale:g}" for t in TASKS.values() if t.lr_scale != 1.0]
    rows += ["", "generations: " + "; ".join(f"{g} {n}" for g, n in GENERATIONS.items()),
             "tasks: " + "; ".join(f"{t.name} ({t.summary})" for t in TASKS.values()),
             "η is each strategy's own, untuned; tasks that scale every η: " + ", ".join(scaled)]
    return "\n".join(rows)


def add_commands(sub) -> None:
    """Register ``rlrs zoo``."""
    p = sub.add_parser("zoo", help="learning-rate strategies x tasks x seeds (the comparison of arXiv 2604.27295, with error bars)",
                       description="Train every strategy on every task with several seeds on the run engine; write "
                                   "results.json, report.md (the cross-task table), zoo_curves.png and runs/ into "
                                   "--out (needed to train or merge).")
    p.add_argument("--list", action="store_true", help="print every strategy with its generation and paper, and the tasks")
    p.add_argument("--tasks", default=None, help=f"tasks, comma-separated, or all ({', '.join(TASKS)})")
    add_renamed(p, "--task", "--tasks", "tasks")
    p.add_argument("--strategies", default="all", help="strategies, comma-separated, or all (default: all)")
    add_seeds_arg(p, default_of(run, "seeds"))
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: each task's own)")
    add_workers_arg(p)
    add_executor_args(p)
    add_out_arg(p, shown="none; needed to train or to merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="instead of training: merge zoo results.json files of different tasks into one report in --out")
    p.set_defaults(func=cmd_zoo)


def cmd_zoo(args) -> int:
    if args.list:
        print(listing())
        return 0
    if args.merge is not None:
        if args.out is None or args.tasks is not None:
            raise ConfigError("--merge: give --out (where the merged results.json and report.md go) and no --tasks, "
                              "e.g. rlrs zoo --merge a/results.json b/results.json --out zoo-all")
        res = merge({str(results_file(p)): load(p) for p in args.merge})
    else:
        if args.tasks is None or args.out is None:
            raise ConfigError("--tasks and --out: both needed to run the zoo (or --list to see the strategies), e.g. "
                              "rlrs zoo --tasks gauss --strategies adamw,dals --out runs/zoo")
        with executor_from_args(args, Path(args.out) / "slurm") as ex:
            res = run(args.tasks.split(","), args.strategies.split(","), args.out, seeds=args.seeds,
                      epochs=args.epochs, workers=args.workers, executor=ex)
    save(res, args.out)
    render(res, args.out)
    print(markdown(res).split("\n## ")[0])
    print(f"results: {Path(args.out) / 'results.json'}  report: {Path(args.out) / 'report.md'}")
    # A diverged strategy is a result, a crash is not; a merge reports what its inputs had, and crashes nothing.
    return 1 if args.merge is None and any(c.failed for c in res.cells) else 0
