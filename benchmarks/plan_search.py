"""Plans without a 300-run search: every way to a plan, from the uniform plan, costed and confirmed.

For each target (``ladder-xs-moe``, ``ladder-xs-dense``, ``ladder-s-dense``, ``ladder-s-moe``; a vision Transformer
on Fashion-MNIST, trained with AdamW or with Muon, ``benchmarks/targets/vit_fashion.py``) the ways to a plan are:

- ``uniform`` (the baseline) and ``paper`` (tables 4/5 of Ludziejewski et al., arXiv 2507.03526;
  the dense table on the ViT too), each at the η_base its own lr-grid chose;
- ``auto-update-size`` and ``auto-sensitivity`` (``rlrs auto``), each at the η_base its own
  lr-grid chose;
- on a larger rung (``ladder-s-dense``; the ViT's ``vit-10x``), ``transferred-METHOD``: the plan ``rlrs auto``
  derived on the rung below, at the η_base its own lr-grid chose on the larger rung (``benchmarks/plan_transfer.sh``);
- ``local`` (the paper's algorithm 2, noise-aware 0.5%), ``hyperband`` and ``gp`` (``rlrs tune
  --sampler``), each started from the uniform plan at its tuned η_base (they search η_base too).

The cost of a way is the training steps it spent beyond the η_base grid every arm gets (the
probe's for ``rlrs auto``, the search's, restarts and re-evaluations included, for ``rlrs tune``).
Every chosen plan is then trained on 3 NEW seeds (1, 2, 3; every search saw seed 0) beside the
uniform baseline: the table reports the mean final eval loss over those seeds, its paired
difference to uniform, and the speed-up of the mean curves over those seeds with its 95% paired
bootstrap interval. Nothing is read from the searches' own best losses (the luckiest evaluation).

    python benchmarks/plan_search.py confirm --bench /work/bench --targets xs-moe   # trains
    python benchmarks/plan_search.py table --bench /work/bench                       # markdown + figure

The runs themselves are made by ``benchmarks/plan_search.sh`` (resumable); ``confirm`` reuses
finished runs too. A ``--command`` target's runs are identified with their working directory, the
checkout the script ran from: run ``confirm`` and ``table`` from the same snapshot path as the
chain (the ViT rows came from ``/tmp/rlrs-bench4``), or the ViT runs train again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np

from rlrs.analysis import bootstrap_speedup, mean_curve, paired_difference, speedup
from rlrs.files import atomic_write_text
from rlrs.plan import Plan
from rlrs import presets

CONFIRM_SEEDS = (1, 2, 3)  # not seed 0, which every search and grid trained on
VIT = "benchmarks/targets/vit_fashion.py"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    uniform: str
    paper: str | None
    steps: int
    model: str | None = None  # a model size, or:
    command: str | None = None  # a script run with the venv's python

    def target(self):
        from rlrs.targets import CommandTarget

        if self.model is not None:
            return self.model
        return CommandTarget(f"{sys.executable} {self.command}", self.steps, str(Path(__file__).resolve().parents[1]))


TARGETS = {
    "xs-moe": Target("xs-moe", "uniform-moe", "paper-moe", 327, model="ladder-xs-moe"),
    "xs-dense": Target("xs-dense", "uniform-dense", "paper-dense", 322, model="ladder-xs-dense"),
    # The rung above, for the transfer of the small rung's automatic plans (plan_transfer.sh).
    "s-dense": Target("s-dense", "uniform-dense", "paper-dense", 1084, model="ladder-s-dense"),
    "s-moe": Target("s-moe", "uniform-moe", "paper-moe", 1095, model="ladder-s-moe"),
    "vit": Target("vit", "uniform-dense", "paper-dense", 400, command=f"{VIT} --optimizer adamw"),
    # The ViT's 10x rung (9.4x the parameters: width 96, 5 blocks) at the same 400 steps, for the transfer of the
    # small ViT's automatic plans (plan_transfer.sh vit vit-10x).
    "vit-10x": Target("vit-10x", "uniform-dense", "paper-dense", 400,
                      command=f"{VIT} --optimizer adamw --d-model 96 --layers 5"),
    "vit-muon": Target("vit-muon", "uniform-dense", None, 400, command=f"{VIT} --optimizer muon"),
}
SEARCHES = ("local", "hyperband", "gp", "gp-startup")  # gp-startup: after the start-up fix (a third of the budget)
AUTOS = ("update-size", "sensitivity")
# way -> (its directory, the method that made it): auto-sensitivity-extrapolated is the sensitivity
# plan of an rlrs that took a parabola's vertex beyond the probed × 1/4 … × 4 (clipped at × 16).
# transferred-METHOD: the plan the method derived on the rung below, its η_base tuned on this one
# (its cost is the probe's on that rung, in that rung's steps).
AUTO_WAYS = {**{f"auto-{m}": (f"auto-{m}", m) for m in AUTOS},
             "auto-sensitivity-extrapolated": ("auto-sensitivity-extrapolated", "sensitivity"),
             **{f"transferred-{m}": (f"transferred-{m}", m) for m in AUTOS}}
WAYS = ("uniform", "paper", *AUTO_WAYS, *SEARCHES)  # one colour each, in every panel


@dataclasses.dataclass(frozen=True)
class Way:
    """One way to a plan on one target: the plan file it chose (η_base included) and its cost."""

    name: str
    plan: Path
    cost_steps: int
    note: str = ""


def _grid_best(path: Path, arm: str) -> float | None:
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("best", {}).get(arm)


def _with_lr(plan: Plan, lr: float, path: Path) -> Path:
    text = dataclasses.replace(plan, base_lr=lr).dumps()
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return path


def _fixed_grid(d: Path, name: str) -> Path:
    """The η_base grid that holds a fixed plan: the target's grid, or grid-paper, where the paper's
    tables were added to a target whose grid was made without them."""
    path = d / "grid" / "grid.json"
    if path.exists() and name in json.loads(path.read_text()).get("arms", {}):
        return path
    return d / "grid-paper" / "grid.json"


def ways(bench: Path, t: Target) -> list[Way]:
    """The ways this target has results for, in the table's order (uniform first)."""
    d = bench / t.name
    plans = d / "confirm" / "plans"
    found = []
    for arm, name in (("uniform", t.uniform), ("paper", t.paper)):
        lr = _grid_best(_fixed_grid(d, name), name) if name else None
        if lr is not None:
            found.append(Way(arm, _with_lr(presets.get(name), lr, plans / f"{arm}.toml"), 0))
    for way, (where, m) in AUTO_WAYS.items():
        a = d / where
        record, plan = a / f"auto-{m}.json", a / f"auto-{m}.toml"
        lr = _grid_best(a / "grid" / "grid.json", f"auto-{m}")
        if record.exists() and lr is not None:
            rec = json.loads(record.read_text())
            found.append(Way(way, _with_lr(Plan.load(plan), lr, plans / f"{way}.toml"),
                             int(rec["cost_steps"]), f"{rec['runs']} probe runs"))
    for s in SEARCHES:
        tuned, search = d / s / "tuned.toml", d / s / "search.json"
        if tuned.exists() and search.exists():
            doc = json.loads(search.read_text())
            if doc.get("stopped") == "running":  # a local search still under way: its plan is not its choice yet
                continue
            plan = Plan.load(tuned)  # a search chose its η_base with its λ
            found.append(Way(s, _with_lr(plan, plan.base_lr, plans / f"{s}.toml"), int(doc["compute"]["steps"]),
                             f"{doc.get('evaluations', '?')} evaluations"))
    return found


def confirm(bench: Path, t: Target, workers: int, log=print):
    """Train every way's plan (and uniform) on seeds 0..3 (the table reads seeds 1..3); finished
    runs are reused, so a second call only reads them back."""
    from rlrs.experiments.compare import compare

    found = ways(bench, t)
    if not found or found[0].name != "uniform":
        return None
    return compare(t.target(), [str(w.plan) for w in found], len(CONFIRM_SEEDS) + 1, bench / t.name / "confirm",
                   workers=workers, log=log)


def _seed_runs(res, arm: str) -> dict[int, object]:
    return {r.seed: r for r in res.runs_of(arm) if r.finished and r.seed in CONFIRM_SEEDS}


def rows(bench: Path, t: Target, workers: int = 2) -> list[dict]:
    """The table's rows, from the confirmation's runs (seeds 1..3 only)."""
    res = confirm(bench, t, workers, log=lambda s: None)
    if res is None:
        return []
    base = _seed_runs(res, "uniform")
    out = []
    for w in ways(bench, t):
        if w.name not in res.arms:
            continue
        runs = _seed_runs(res, w.name)
        seeds = sorted(set(base) & set(runs))
        grid = _grid_runs(bench / t.name, w.name, t)
        row = {"target": t.name, "way": w.name, "cost_steps": w.cost_steps, "cost_runs": w.cost_steps / t.steps,
               "grid_runs": grid,
               "base_lr": Plan.load(w.plan).base_lr, "seeds": seeds, "note": w.note,
               "finished": f"{len(runs)}/{len(CONFIRM_SEEDS)}"}
        if len(runs) == len(CONFIRM_SEEDS):
            finals = [runs[s].final_loss for s in CONFIRM_SEEDS]
            row["loss"] = float(np.mean(finals))
            row["loss_std"] = float(np.std(finals, ddof=1))
        if seeds and w.name != "uniform" and len(seeds) == len(CONFIRM_SEEDS):
            diff = paired_difference([base[s].final_loss for s in seeds], [runs[s].final_loss for s in seeds])
            row["diff"], row["diff_std"] = diff.mean, diff.std
            bc = [base[s].curve.arrays() for s in seeds]
            rc = [runs[s].curve.arrays() for s in seeds]
            bs, bm, _ = mean_curve(bc)
            rs, rm, _ = mean_curve(rc)
            sp = speedup(bs, bm, rs, rm)
            row["speedup"] = sp.percent
            iv = bootstrap_speedup(bc, rc)
            row["interval"] = None if iv is None else [iv.low, iv.high]
        out.append(row)
    return out


def _grid_runs(d: Path, way: str, t: Target) -> int:
    """Runs of the η_base grid this way needed: its own grid's (uniform, paper, the automatic
    plans); none for a search, which searches η_base itself from uniform's tuned value."""
    path = {"uniform": _fixed_grid(d, t.uniform), "paper": _fixed_grid(d, t.paper or "")}.get(
        way, d / way / "grid" / "grid.json")
    arm = {"uniform": t.uniform, "paper": t.paper, **{w: f"auto-{m}" for w, (_, m) in AUTO_WAYS.items()}}.get(way, way)
    if way in SEARCHES or not path.exists():
        return 0
    arms = json.loads(path.read_text())["arms"]
    return sum(len(p["runs"]) for p in arms[arm]["points"])


def _fmt(x, spec: str, none: str = "—") -> str:
    return none if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(bench: Path, shown: list[tuple[Target, list[dict]]]) -> str:
    lines = ["| target | way | cost: training steps (runs) | + own η_base grid (runs) | η_base | final loss, seeds 1–3 "
             "| Δ vs uniform (paired) | speed-up vs uniform | 95% interval | share of the best Δ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    every = []
    for t, rs in shown:
        every += rs
        best = max((r["diff"] for r in rs if "diff" in r), key=lambda d: -d, default=None)  # most negative
        for r in rs:
            iv = r.get("interval")
            kept = (r["diff"] / best * 100) if best is not None and best < 0 and "diff" in r else None
            if r["way"] == "uniform":
                sp = "baseline"
            elif "diff" not in r:
                sp = "not measured"
            else:  # None: never reaches the baseline's final loss
                sp = "none" if r.get("speedup") is None else f"{r['speedup']:+.1f}%"
            # An open end: some resample of the seeds never reaches the baseline's loss.
            ivs = "—" if not iv else "[" + _fmt(iv[0], "+.1f", "open") + ", " + _fmt(iv[1], "+.1f", "open") + "]"
            lines.append(
                f"| {t.name} | {r['way']} | {r['cost_steps']:,} ({r['cost_runs']:.1f}) | {r['grid_runs']} | "
                f"{r['base_lr']:.3g} | {_fmt(r.get('loss'), '.4f')} ± {_fmt(r.get('loss_std'), '.4f')} | "
                f"{_fmt(r.get('diff'), '+.4f')} ± {_fmt(r.get('diff_std'), '.4f')} | {sp} | {ivs} | "
                f"{_fmt(kept, '.0f')}{'%' if kept is not None else ''} |")
    atomic_write_text(bench / "plan_search.json", json.dumps(every, indent=1))
    return "\n".join(lines)


def figure(shown: list[tuple[Target, list[dict]]], path: Path) -> None:
    from rlrs.plots import _plt, _save

    plt = _plt()
    shown = [(t, rs) for t, rs in shown if rs]
    colors = [*plt.get_cmap("tab10").colors, "black", "gray"]  # one colour per way, the same in every panel
    cols = min(4, len(shown))  # rows of at most 4 panels: seven targets in one row are unreadable
    rows_ = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.9 * cols + 2.2, 3.6 * rows_ + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    handles = {}
    for ax, (t, rs) in zip(axes.flat, shown):
        zero = 0
        for r in rs:
            if "loss" not in r:
                continue
            x = r["cost_runs"]
            if x == 0:  # the fixed plans (uniform, paper) at 0.02 on the log axis, side by side
                x, zero = 0.02 * (1.15 ** zero), zero + 1
            h = ax.errorbar([x], [r["loss"]], yerr=[r["loss_std"]], fmt="o", capsize=3,
                            color=colors[WAYS.index(r["way"]) % len(colors)])
            handles.setdefault(r["way"], h)
        ax.set_xscale("log")
        ax.set_xlabel("cost beyond the η_base grid (runs)")
        ax.set_title(t.name)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("final eval loss, 3 new seeds (± std)")
    order = [w for w in WAYS if w in handles]
    fig.legend([handles[w] for w in order], order, loc="outside right center", frameon=False, fontsize=8)
    fig.suptitle("Each way's plan on 3 new seeds against what it cost (fixed plans drawn at 0.02 runs)", fontsize=10)
    _save(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("confirm", "table"))
    p.add_argument("--bench", type=Path, required=True)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--figure", type=Path, default=Path("benchmarks/results/plan-search.png"))
    args = p.parse_args()
    targets = [TARGETS[n] for n in args.targets.split(",")]
    if args.what == "confirm":
        for t in targets:
            confirm(args.bench, t, args.workers)
    else:
        shown = [(t, rows(args.bench, t, args.workers)) for t in targets]  # one read of each confirmation
        print(table(args.bench, shown))
        figure(shown, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
