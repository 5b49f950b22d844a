"""The evidence ladder: the paper's protocol on the compute-optimal ladder presets.

    python benchmarks/evidence.py ladder --out bench/evidence --families moe,dense --rungs xs,s
    python benchmarks/evidence.py tune   --out bench/evidence --families moe --budget 30
    python benchmarks/evidence.py ablate --out bench/evidence      # table 6 on the smallest rung
    python benchmarks/evidence.py rows   --out bench/evidence      # rebuild evidence.json only

``ladder``: for every family (``moe``, ``dense``) and rung (``xs``, ``s``, ``m``: the
``ladder-*`` presets, trained at 20 tokens per active non-embedding parameter), ``lr-grid`` on the
{1, 2, 5}×10⁻ⁿ ladder for each arm (uniform baseline, the paper's tables 4/5, Blockwise LR's static
multipliers and, once ``tune`` has run, the plan tuned on the smallest rung) until every arm's best
η_base is inside its grid, then ``compare`` at each arm's own best η_base with 3 paired seeds.
A larger rung's grid starts around the η_base the arm chose one rung below.

``tune``: on the smallest rung, the same evaluation budget spent by rlrs's local search (algorithm
2) with and without pruning, and by Optuna's TPE and CMA-ES over the same parameters in log scale.

Every stage runs on rlrs's run engine: runs are content-addressed under ``--out`` and reused, so
rerunning the same command after a kill trains only what is missing. After every stage
``benchmarks/results/evidence.json`` is rebuilt from the finished results (one row per model and
arm); an arm that diverged is a row with its status, never dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

import rlrs
from rlrs import presets
from rlrs.experiments.compare import compare
from rlrs.experiments.lr_grid import lr_grid
from rlrs.config import json_safe
from rlrs.files import atomic_write_text
from rlrs.models import LADDER, count_params, get_size
from rlrs.plan import Plan
from rlrs.train import RunConfig

RUNGS = ("xs", "s", "m", "l")  # xs, s, m on a CPU; l on a GPU (benchmarks/gpu_ladder.sh)
CPU_RUNGS = ("xs", "s", "m")
ARMS = ("uniform", "paper", "blockwise", "tuned")
SEEDS = 3
EXTEND = 6  # grid values an arm may grow by at an edge
# One thread per run and two runs at once: on 2 cores that beats one 2-thread run for models this
# small (see BENCHMARKS.md, throughput), and it is what "about 10 minutes on one core" means.
SETS: dict = {"train.threads": 1}  # --set adds to it (e.g. train.precision=bf16 on a GPU)
# Where evidence.json, the tuned plans and the figures go: benchmarks/results, or
# $RLRS_EVIDENCE_DIR (a chain run from a snapshot of the code writes into the working tree's).
EVIDENCE = Path(os.environ.get("RLRS_EVIDENCE_DIR") or Path(__file__).resolve().parent / "results") / "evidence.json"


def rung_preset(family: str, rung: str) -> str:
    return LADDER[family][RUNGS.index(rung)]


def active_params(preset: str) -> int:
    return count_params(get_size(preset))["active_non_embedding"]


def tuned_plan(family: str, out: Path) -> Path | None:
    """The plan ``tune`` found on the smallest rung: from ``out``, else the copy kept in
    ``benchmarks/results`` (so a GPU machine without ``out`` transfers the same λ)."""
    for p in (out / f"tune-{family}-local" / "tuned.toml", EVIDENCE.parent / f"tuned-{family}.toml"):
        if p.exists():
            return p
    return None


def arm_plans(family: str, out: Path, arms: tuple[str, ...] | None = None) -> list[tuple[str, Plan]]:
    """(arm, plan) in compare order, the uniform baseline first. ``arms=None``: every arm, the
    tuned one once ``tune`` has made it; named arms must all exist."""
    plans = []
    for kind in ("uniform", "paper", "blockwise"):
        if arms is None or kind in arms or kind == "uniform":
            plans.append((f"{kind}-{family}", presets.get(f"{kind}-{family}")))
    tuned = tuned_plan(family, out)
    if arms is not None and "tuned" in arms and tuned is None:
        raise SystemExit(f"--arms tuned: no tuned plan for {family} in {out} or {EVIDENCE.parent}; "
                         "run `evidence.py tune` first or leave tuned out of --arms")
    if (arms is None or "tuned" in arms) and tuned is not None:
        plans.append((f"tuned-{family}", Plan.load(tuned)))
    return plans


def _centres_below(out: Path, family: str, rung: str) -> dict[str, float]:
    """Each arm's best η_base on the rung below: its grid in ``out``, else evidence.json's rows."""
    i = RUNGS.index(rung)
    if i == 0:
        return {}
    below = rung_preset(family, RUNGS[i - 1])
    grid = _grid(out / f"{family}-{RUNGS[i - 1]}")
    if grid is not None:
        return {a: v for a, v in grid["best"].items() if v is not None}
    if not EVIDENCE.exists():
        return {}
    centres = {}
    for r in json.loads(EVIDENCE.read_text())["rows"]:
        if r["model"] == below:
            centres[r["arm"]] = r["base_lr"]
            centres[r["baseline"]] = r["baseline_base_lr"]
    return {a: v for a, v in centres.items() if v is not None}


def plan_files(family: str, rung: str, out: Path, centres: dict[str, float], arms: tuple[str, ...] | None = None) -> list[str]:
    """Write each arm's plan with η_base at its grid centre; the file stem is the arm's name."""
    d = out / "plans" / f"{family}-{rung}"
    d.mkdir(parents=True, exist_ok=True)
    files = []
    for arm, plan in arm_plans(family, out, arms):
        if arm in centres:
            plan = dataclasses.replace(plan, base_lr=centres[arm])
        path = d / f"{arm}.toml"
        text = plan.dumps()
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        files.append(str(path))
    return files


def run_ladder(out: Path, families: list[str], rungs: list[str], workers: int, arms: tuple[str, ...] | None = None,
               write: bool = True, points: int = 3) -> None:
    for family in families:
        for rung in rungs:
            preset = rung_preset(family, rung)
            d = out / f"{family}-{rung}"
            centres = _centres_below(out, family, rung)
            if RUNGS.index(rung):
                print(f"grid centres from the rung below: {centres or 'none found, each plan its own η_base'}", flush=True)
            files = plan_files(family, rung, out, centres, arms)
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "environment.json").exists():  # the machine that trains this rung
                atomic_write_text(d / "environment.json", json.dumps(environment(), indent=1) + "\n")
            print(f"== {datetime.datetime.now():%H:%M:%S} lr-grid {preset}", flush=True)
            grid = lr_grid(preset, files, d, sets=SETS, workers=workers, points=points, extend=EXTEND)
            best = dict(grid.best)
            print(f"== {datetime.datetime.now():%H:%M:%S} compare {preset} at {best}", flush=True)
            compare(preset, files, SEEDS, d, sets=SETS, base_lrs=best, workers=workers)
            if write:
                write_rows(out)


def run_ablate(out: Path, families: list[str], workers: int) -> None:
    """Table 6 on the smallest rung: the paper's plan at its best η_base, each component's λ reset
    to 1 in turn, 3 seeds."""
    from rlrs.experiments.ablate import ablate

    for family in families:
        grid = _grid(out / f"{family}-xs")
        if grid is None:
            raise SystemExit(f"ablate: run `evidence.py ladder --rungs xs` first ({out / f'{family}-xs'} has no grid)")
        plan = dataclasses.replace(presets.get(f"paper-{family}"), base_lr=grid["best"][f"paper-{family}"])
        path = out / "plans" / f"{family}-xs-ablate" / f"paper-{family}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != plan.dumps():
            atomic_write_text(path, plan.dumps())
        print(f"== {datetime.datetime.now():%H:%M:%S} ablate {rung_preset(family, 'xs')}", flush=True)
        ablate(rung_preset(family, "xs"), str(path), out / f"ablate-{family}", kind="leave-one-out", seeds=SEEDS,
               sets=SETS, workers=workers)


def _run_dir(d: Path, recorded: str) -> Path:
    # results.json records a run's directory as the command saw it (maybe relative to another
    # working directory); every run of a rung lives in that rung's runs/ folder.
    return d / "runs" / Path(recorded).name


def _grid(d: Path) -> dict | None:
    p = d / "grid.json"
    return json.loads(p.read_text()) if p.exists() else None


def _results(d: Path) -> dict | None:
    p = d / "results.json"
    return json.loads(p.read_text()) if p.exists() else None


CPU_ONLY = ", no GPU"  # how environment() ends a machine without a GPU


def environment() -> dict:
    return {
        "machine": f"{platform.machine()} {_cpu_name()}, {os.cpu_count()} cores{CPU_ONLY}"
        if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "rlrs": rlrs.__version__},
        "threads": SETS["train.threads"],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def rows_for(out: Path, family: str, rung: str) -> list[dict]:
    """One row per relative arm of a finished compare on one rung."""
    d = out / f"{family}-{rung}"
    res, grid = _results(d), _grid(d)
    if res is None or grid is None:
        return []
    preset = rung_preset(family, rung)
    source = rung_preset(family, RUNGS[0])
    base = res["baseline"]
    # What the runs really were (a --set may have changed the model or the length).
    cfg = RunConfig.from_dict(json.loads((_run_dir(d, res["runs"][0]["out"]) / "config.json").read_text()))
    active = count_params(cfg.model)["active_non_embedding"]
    tokens = res["total_steps"] * cfg.train.batch_size * (cfg.train.seq_len or cfg.model.seq_len)
    env_path = d / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {"machine": None, "versions": None, "threads": None}
    rows = []
    for arm, sp in res["speedups"].items():
        tuned = arm.startswith("tuned-")
        kind = ("tuned" if rung == RUNGS[0] else "transfer") if tuned else "compare"
        arm_res = res["arms"][arm]
        interval = sp.get("interval")
        diff = res["differences"].get(arm)
        n_ok = len(arm_res["seeds_finished"])
        status = "ok" if n_ok == res["seeds"] else ("diverged" if n_ok == 0 else "partly diverged")
        rows.append({
            "kind": kind,
            "model": preset,
            "arm": arm,
            "baseline": base,
            "active_params": active,
            "size_ratio": round(active / active_params(source), 3) if kind == "transfer" else None,
            "tokens_per_param": round(tokens / active, 2),
            "total_steps": res["total_steps"],
            "seeds": res["seeds"],
            "status": status,
            "not_finished": arm_res["not_finished"] + res["arms"][base]["not_finished"],
            "base_lr": arm_res["base_lr"],
            "base_lr_interior": grid["arms"][arm]["edge"] is None and grid["arms"][arm]["best"] is not None,
            "baseline_base_lr": res["arms"][base]["base_lr"],
            "baseline_base_lr_interior": grid["arms"][base]["edge"] is None and grid["arms"][base]["best"] is not None,
            "speedup": sp["percent"],
            "speedup_ci95": None if interval is None else [interval["low"], interval["high"]],
            "final_loss": (arm_res.get("final_loss") or {}).get("mean"),  # null or absent: no seed finished
            "baseline_final_loss": (res["arms"][base].get("final_loss") or {}).get("mean"),
            "loss_difference": None if diff is None else diff["mean"],
            "loss_difference_std": None if diff is None else diff["std"],
            "source": str(d / "results.json"),
            "date": datetime.date.fromtimestamp((d / "results.json").stat().st_mtime).isoformat(),
            **env,
        })
    return rows


def _row_order(row: dict) -> tuple:
    # Rungs smallest first, MoE before dense (the paper's headline), arms in ARMS order.
    family, rung = next((f, i) for f, names in LADDER.items() for i, n in enumerate(names) if n == row["model"])
    arm = row["arm"].rsplit("-", 1)[0]
    return rung, ("moe", "dense").index(family), ARMS.index(arm) if arm in ARMS else len(ARMS)


def write_rows(out: Path) -> Path:
    """Rebuild ``benchmarks/results/evidence.json`` from every finished result under ``out``."""
    rows = [r for family in LADDER for rung in RUNGS for r in rows_for(out, family, rung)]
    if EVIDENCE.exists():  # keep rows measured elsewhere (a GPU's rung) that ``out`` does not hold
        mine = {(r["model"], r["arm"]) for r in rows}
        rows += [r for r in json.loads(EVIDENCE.read_text())["rows"] if (r["model"], r["arm"]) not in mine]
    rows.sort(key=_row_order)
    tuners = out / "tuners.json"
    old = json.loads(EVIDENCE.read_text()).get("tuners") if EVIDENCE.exists() else None
    doc = {
        "about": "The paper's protocol on rlrs's compute-optimal ladder (benchmarks/evidence.py).",
        "updated": datetime.date.today().isoformat(),
        "rows": rows,
        "tuners": json.loads(tuners.read_text()) if tuners.exists() else old,  # never dropped by another --out
    }
    EVIDENCE.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(EVIDENCE, json.dumps(json_safe(doc), indent=1) + "\n")
    print(f"evidence: {len(rows)} rows -> {EVIDENCE}", flush=True)
    return EVIDENCE


# One look per arm in every figure; tuned is dashed because it often equals paper, drawn beneath.
ARM_STYLE = {"uniform": ("C0", "-"), "paper": ("C1", "-"), "blockwise": ("C2", "-"), "tuned": ("C3", "--")}


def _style(arm: str) -> dict:
    color, ls = ARM_STYLE.get(arm.rsplit("-", 1)[0], ("C7", "-"))
    return {"color": color, "linestyle": ls}


def _rung_dir(outs: list[Path], family: str, rung: str) -> Path | None:
    """The first of ``outs`` that holds this rung's grid (a rung may have run on another machine)."""
    return next((o / f"{family}-{rung}" for o in outs if (o / f"{family}-{rung}" / "grid.json").exists()), None)


def figures(out: Path, more: list[Path] | None = None) -> list[Path]:
    """The evidence's figures in ``benchmarks/results``: speed-up against model size with 95%
    intervals, figure 3 (final loss against η_base per rung) and figure 2 (MoE training loss at
    a high η_base against the best one, per arm). ``more``: other ``--out`` folders (a GPU
    lease's) searched for rungs that ``out`` lacks."""
    from rlrs.analysis import detect_spikes, read_run
    from rlrs.plots import _plt, _save

    plt = _plt()
    made = []
    rows = json.loads(EVIDENCE.read_text())["rows"] if EVIDENCE.exists() else []
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, family in zip(axes, LADDER):
            for arm in sorted({r["arm"].rsplit("-", 1)[0] for r in rows if r["model"].endswith(family)}):
                rs = sorted((r for r in rows if r["model"].endswith(family) and r["arm"] == f"{arm}-{family}"),
                            key=lambda r: r["active_params"])
                got = [r for r in rs if r["speedup"] is not None]
                none = [r for r in rs if r["speedup"] is None]
                ci = [r["speedup_ci95"] or [None, None] for r in got]
                # An interval end with no speed-up has no number: the bar stops at the point.
                lo = [max(0.0, r["speedup"] - c[0]) if c[0] is not None else 0.0 for r, c in zip(got, ci)]
                hi = [max(0.0, c[1] - r["speedup"]) if c[1] is not None else 0.0 for r, c in zip(got, ci)]
                ax.errorbar([r["active_params"] for r in got], [r["speedup"] for r in got], yerr=[lo, hi],
                            marker="o", capsize=3, label=arm, **_style(arm))
                if none:  # never reached the baseline's loss: no speed-up, not 0%
                    ax.scatter([r["active_params"] for r in none], [0.0] * len(none), marker="x", s=60,
                               color=_style(arm)["color"], label=f"{arm}: no speed-up")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("active non-embedding parameters")
            ax.set_title(f"{family}: speed-up over the tuned uniform baseline")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(frameon=False, fontsize=8)
        axes[0].set_ylabel("steps saved to the baseline's final loss,\n% (95% interval)")
        made.append(_save(fig, EVIDENCE.parent / "evidence-speedup.png"))
    outs = [out, *(more or [])]
    dirs = {(f, r): _rung_dir(outs, f, r) for f in LADDER for r in RUNGS}
    dirs = {k: d for k, d in dirs.items() if d is not None}
    grids = {k: _grid(d) for k, d in dirs.items()}
    if grids:
        rungs = [r for r in RUNGS if any(k[1] == r for k in grids)]
        fig, axes = plt.subplots(len(LADDER), len(rungs), figsize=(4 * len(rungs), 7), squeeze=False)
        for i, family in enumerate(LADDER):
            for j, rung in enumerate(rungs):
                ax = axes[i][j]
                g = grids.get((family, rung))
                if g is None:
                    ax.set_visible(False)
                    continue
                for arm, a in g["arms"].items():
                    pts = [(p["base_lr"], p["mean"]) for p in a["points"] if p["mean"] is not None]
                    if pts:
                        ax.plot(*zip(*pts), marker="o", label=arm, **_style(arm))
                    bad = [p["base_lr"] for p in a["points"] if p["mean"] is None]
                    if bad:
                        ax.scatter(bad, [ax.get_ylim()[1]] * len(bad), marker="x", color="red")
                ax.set_xscale("log")
                env = dirs[(family, rung)] / "environment.json"
                machine = json.loads(env.read_text())["machine"] if env.exists() else ""
                where = "" if not machine or machine.endswith(CPU_ONLY) else f" ({machine})"
                ax.set_title(rung_preset(family, rung) + where, fontsize=9)
                ax.set_xlabel("η_base")
                ax.legend(frameon=False, fontsize=7)
            axes[i][0].set_ylabel("final eval loss (seed 0)")
        made.append(_save(fig, EVIDENCE.parent / "evidence-lr-grid.png"))
    moe_rungs = [r for r in RUNGS if ("moe", r) in grids]
    if moe_rungs:  # figure 2 on the largest MoE rung with a grid
        rung = moe_rungs[-1]
        g = grids[("moe", rung)]
        fig, ax = plt.subplots(figsize=(7, 4))
        for arm in ("uniform-moe", "paper-moe"):
            a = g["arms"].get(arm)
            if a is None:
                continue
            high = max((p for p in a["points"] if p["runs"]), key=lambda p: p["base_lr"])
            for p, style in ((next(q for q in a["points"] if q["base_lr"] == a["best"]), "-"), (high, ":")):
                logs = read_run(_run_dir(dirs[("moe", rung)], p["runs"][0]["out"]))
                if not logs.train_steps.size:
                    continue
                spikes = detect_spikes(logs.train_steps, logs.train_loss)
                ax.plot(logs.train_steps, logs.train_loss, style, lw=0.8,
                        label=f"{arm} η_base {p['base_lr']:g} ({len(spikes)} spikes)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{rung_preset('moe', rung)}: the best and the highest η_base (figure 2)")
        ax.legend(frameon=False, fontsize=7)
        made.append(_save(fig, EVIDENCE.parent / "evidence-spikes-moe.png"))
    return made


def _pct(x: float | None) -> str:
    return "no speed-up" if x is None else f"{x:+.1f}%"


def tables(out: Path) -> str:
    """The markdown BENCHMARKS.md shows: evidence rows, the tuner comparison, leave-one-out."""
    lines = []
    rows = json.loads(EVIDENCE.read_text())["rows"] if EVIDENCE.exists() else []
    if rows:
        lines += ["| model | kind | arm | active params | steps | η_base (interior) | baseline η_base (interior) | "
                  "final loss: arm / baseline | paired diff ± std | speed-up | 95% interval | trained on |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            ci = r["speedup_ci95"] or [None, None]
            ratio = f" ({r['size_ratio']:g}× source)" if r["size_ratio"] else ""
            status = "" if r["status"] == "ok" else f" **{r['status']}**"
            lines.append(
                f"| {r['model']} | {r['kind']}{ratio} | {r['arm']}{status} | {r['active_params']:,} | {r['total_steps']} | "
                f"{r['base_lr']:g} ({'yes' if r['base_lr_interior'] else 'edge'}) | "
                f"{r['baseline_base_lr']:g} ({'yes' if r['baseline_base_lr_interior'] else 'edge'}) | "
                f"{_f(r['final_loss'])} / {_f(r['baseline_final_loss'])} | "
                f"{_f(r['loss_difference'], '+.4f')} ± {_f(r['loss_difference_std'])} | "
                f"**{_pct(r['speedup'])}** | [{_pct(ci[0])}, {_pct(ci[1])}] | {_machine(r)} |")
    tuners = out / "tuners.json"
    if tuners.exists():
        for family, fam in json.loads(tuners.read_text()).items():
            u = fam.get("uniform_confirmed") or {}
            lines += ["", f"Tuners on {fam['preset']} (budget {fam['budget']}, {len(fam['params'])} parameters; "
                      f"confirmed: mean final loss of the best plan over seeds {u.get('seeds')}; uniform baseline "
                      f"at η_base {u.get('base_lr')}: {_f(u.get('mean'))}):", "",
                      "| search | evaluations | training steps | start loss | chosen point's loss (seed 0) | "
                      "lowest seen after 10 / 20 / 30 / 40 | chosen point on 3 new seeds |",
                      "|---|---|---|---|---|---|---|"]
            for m, r in fam["methods"].items():
                b = r["lowest_after"]
                at = " / ".join(_f(b[i - 1]) if len(b) >= i else "-" for i in (10, 20, 30, 40))
                c = r.get("confirmed") or {}
                conf = _f(c.get("mean")) if c.get("mean") is not None else (
                    f"{c.get('n_finished')} of 3 seeds finished" if c else "-")
                lines.append(f"| {m} | {r['evaluations']} | {r['compute_steps']:,} | {_f(r['start_loss'])} | "
                             f"{_f(r['best_loss'])} | {at} | {conf} |")
    for family in LADDER:
        p = out / f"ablate-{family}" / "ablate.json"
        if p.exists():
            a = json.loads(p.read_text())
            lines += ["", f"Leave-one-out on {a['preset']} ({a['seeds']} seeds; table 6):", "",
                      "| component reset to λ = 1 | its λ in the plan | final loss without it | full plan | "
                      "speed-up of the full plan over it |", "|---|---|---|---|---|"]
            for r in a["leave_one_out"]:
                lam = " → ".join(f"{v:g}" for v in r["lambdas"])
                lines.append(f"| {r['component']} | {lam} | {_f(r['final_loss'])} | {_f(r['full_final_loss'])} | "
                             f"{_pct(r['speedup_percent'])} |")
    return "\n".join(lines)


def _machine(row: dict) -> str:
    m = row.get("machine") or "-"
    if not m.endswith(CPU_ONLY):
        return m
    t = row.get("threads")
    return f"CPU, {t} thread{'' if t == 1 else 's'} a run"


def _f(x, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("ladder", "tune", "ablate", "rows", "figures", "tables"))
    p.add_argument("--out", default="bench/evidence")
    p.add_argument("--families", default="moe,dense")
    p.add_argument("--rungs", default=",".join(CPU_RUNGS))
    p.add_argument("--arms", default=None,
                   help=f"ladder: arms besides the uniform baseline, from {','.join(ARMS)} (default: all, tuned once it exists)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run setting for every run, e.g. train.precision=bf16 (GPU)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--points", type=int, default=3,
                   help="ladder: the first grid's values per arm; a GPU running many runs at once can afford 5, "
                        "which saves rounds of edge extension")
    p.add_argument("--budget", type=int, default=30, help="tune: evaluations per search")
    p.add_argument("--more", default="", help="figures: other --out folders (e.g. a GPU lease's, "
                   "bench/gpu-evidence) searched for rungs --out lacks")
    p.add_argument("--no-rows", action="store_true", help="do not rewrite benchmarks/results/evidence.json (checks)")
    args = p.parse_args(argv)
    out = Path(args.out)
    from rlrs.options import parse_sets

    SETS.update(parse_sets(args.set))
    arms = None if args.arms is None else tuple(a for a in args.arms.split(",") if a)
    for a in arms or ():
        if a not in ARMS:
            p.error(f"--arms: {a!r} is not one of {', '.join(ARMS)}")
    families = [f for f in args.families.split(",") if f]
    rungs = [r for r in args.rungs.split(",") if r]
    for f in families:
        if f not in LADDER:
            p.error(f"--families: {f!r} is not one of {', '.join(LADDER)}")
    for r in rungs:
        if r not in RUNGS:
            p.error(f"--rungs: {r!r} is not one of {', '.join(RUNGS)}")
    if args.stage == "ladder":
        run_ladder(out, families, rungs, args.workers, arms, write=not args.no_rows, points=args.points)
    elif args.stage == "tune":
        from tuners import run_tuners  # benchmarks/tuners.py

        run_tuners(out, families, args.budget, args.workers, sets=dict(SETS),
                   presets_of={f: rung_preset(f, RUNGS[0]) for f in families}, results=EVIDENCE.parent)
        for family in families:  # the tuned λ as data beside evidence.json
            src = out / f"tune-{family}-local" / "tuned.toml"
            if src.exists():
                atomic_write_text(EVIDENCE.parent / f"tuned-{family}.toml", src.read_text())
        write_rows(out)
    elif args.stage == "ablate":
        run_ablate(out, families, args.workers)
    elif args.stage == "tables":
        print(tables(out))
    elif args.stage == "figures":
        for f in figures(out, [Path(m) for m in args.more.split(",") if m]):
            print(f"figure: {f}")
    else:
        write_rows(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
