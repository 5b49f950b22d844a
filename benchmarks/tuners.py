"""The tuner comparison on the ladder's smallest rung (run by ``benchmarks/evidence.py tune``).

The same budget of evaluations spent by four searches over the same parameters (η_base and every
component's λ_start and λ_end, one seed per point):

- ``local``: the paper's algorithm 2 (``rlrs tune``), noise-aware: a move must gain 0.5%;
- ``local-prune``: the same with pruning at 25% and 50% of a run;
- ``tpe`` and ``cmaes``: Optuna's samplers in log scale (``rlrs tune --sampler``).

Each starts from the paper's plan (tables 4/5) at the η_base the lr-grid chose for it on that rung.
The best point a search reports is optimistic (the luckiest of many noisy runs), so every search's
best plan is trained again with 3 fresh seeds (``confirm``) against the uniform baseline.
Writes ``OUT/tuners.json`` (best loss against evaluations and compute, and the confirmed loss)
and ``benchmarks/results/tuners-<family>.png``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rlrs import presets
from rlrs.experiments.compare import compare
from rlrs.config import json_safe
from rlrs.files import atomic_write_text
from rlrs.tune import Pruning, TuneSpec, tune
from rlrs.tune.samplers import sampler_search

METHODS = ("local", "local-prune", "tpe", "cmaes")
MIN_IMPROVEMENT = 0.005
CONFIRM_SEEDS = (1, 2, 3)  # not seed 0, which every search trained on


def _start_plan(family: str, out: Path):
    grid = json.loads((out / f"{family}-xs" / "grid.json").read_text())
    best = grid["best"][f"paper-{family}"]
    return dataclasses.replace(presets.get(f"paper-{family}"), base_lr=best)


def _params(family: str) -> list[str]:
    comps = ("embedding", "unembedding", "attention") + (("router", "experts") if family == "moe" else ("feedforward",))
    return ["plan.base_lr"] + [f"plan.{c}.{e}" for c in comps for e in ("start", "end")]


def run_tuners(out: Path, families: list[str], budget: int, workers: int, *, sets: dict, presets_of: dict[str, str],
               results: Path, methods: dict[str, tuple[str, ...]] | None = None) -> dict:
    """``presets_of``: the smallest rung's preset per family; figures go to ``results``."""
    methods = methods or {"moe": METHODS, "dense": ("local",)}
    doc = json.loads((out / "tuners.json").read_text()) if (out / "tuners.json").exists() else {}
    for family in families:
        preset = presets_of[family]
        plan = _start_plan(family, out)
        fam = doc.setdefault(family, {"methods": {}})
        # The settings of this run (a rerun with others updates them; methods keep their results).
        fam.update({"preset": preset, "budget": budget, "params": _params(family), "start_base_lr": plan.base_lr,
                    "min_improvement": MIN_IMPROVEMENT})
        for method in methods[family]:
            d = out / f"tune-{family}-{method}"
            prune = Pruning() if method == "local-prune" else None
            local = method.startswith("local")
            spec = TuneSpec.create(preset, plan, sets, steps=None, params=_params(family), prune=prune,
                                   min_improvement=MIN_IMPROVEMENT if local else 0.0)
            print(f"== tune {family} {method} (budget {budget}) -> {d}", flush=True)
            if local:
                r = tune(spec, d, budget, workers=workers, log=print)
                fam["methods"][method] = {"evaluations": r.evaluations, "best_loss": r.best_loss,
                                          "start_loss": r.start_loss, "stopped": r.stopped, **_history(d, "rlrs-tune")}
            else:
                r = sampler_search(spec, d, budget, method, workers=workers)
                fam["methods"][method] = {"evaluations": r.evaluations, "best_loss": r.best_loss,
                                          "start_loss": r.start_loss, "stopped": "budget", **_history(d, f"rlrs-{method}")}
            atomic_write_text(out / "tuners.json", json.dumps(json_safe(doc), indent=1) + "\n")
        _confirm(out, family, fam, methods[family], workers, sets)
        atomic_write_text(out / "tuners.json", json.dumps(json_safe(doc), indent=1) + "\n")
        _plot(family, fam, results)
    return doc


def _history(d: Path, study_name: str) -> dict:
    """The lowest loss seen after each counted evaluation (``lowest_after``) and the training
    steps spent so far. For the local search this is not its chosen point: a move needs a 0.5%
    gain, so it may keep a point while a lower (within-noise) loss was seen."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{d / 'study.db'}")
    best, curve, steps, spent = float("inf"), [], [], 0
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "abandoned" in t.user_attrs or not t.state.is_finished():
            continue
        if t.state.name == "FAIL" and "compute_steps" not in t.user_attrs and "error" not in t.user_attrs:
            continue  # a trial a killed sampler process left behind, asked again later
        spent += int(t.user_attrs.get("compute_steps", 0))
        if t.state.name == "COMPLETE" and "error" not in t.user_attrs:
            best = min(best, float(t.value))
        curve.append(best)
        steps.append(spent)
    return {"lowest_after": curve, "steps_after": steps, "compute_steps": spent}


def _confirm(out: Path, family: str, fam: dict, methods, workers: int, sets: dict) -> None:
    """Train each search's best plan with fresh seeds against the uniform baseline."""
    d = out / f"tune-{family}-confirm"
    plans = [f"uniform-{family}"]
    plan_dir = d / "plans"
    plan_dir.mkdir(parents=True, exist_ok=True)
    for m in methods:
        src = out / f"tune-{family}-{m}" / "tuned.toml"
        dst = plan_dir / f"{m}.toml"
        if not dst.exists() or dst.read_text() != src.read_text():
            atomic_write_text(dst, src.read_text())
        plans.append(str(dst))
    grid = json.loads((out / f"{family}-xs" / "grid.json").read_text())
    base = {f"uniform-{family}": grid["best"][f"uniform-{family}"]}
    # Seeds 1..3: compare numbers seeds from 0, so ask for 4 and leave seed 0 out of the summary.
    res = compare(fam["preset"], plans, len(CONFIRM_SEEDS) + 1, d, sets=sets, base_lrs=base,
                  workers=workers)
    for m in methods:
        fam["methods"][m]["confirmed"] = _confirmed(res, m)
    fam["uniform_confirmed"] = {**_confirmed(res, f"uniform-{family}"), "base_lr": base[f"uniform-{family}"]}


def _confirmed(res, arm: str) -> dict:
    """Final losses over the confirmation seeds; the mean only when every seed finished (a plan
    that diverges on some seeds must not look fine)."""
    losses = {r.seed: r.final_loss for r in res.runs_of(arm) if r.finished and r.seed in CONFIRM_SEEDS}
    ok = len(losses) == len(CONFIRM_SEEDS)
    return {"seeds": list(CONFIRM_SEEDS), "losses": [losses.get(s) for s in CONFIRM_SEEDS],
            "n_finished": len(losses), "mean": sum(losses.values()) / len(losses) if ok else None}


def _plot(family: str, fam: dict, results: Path) -> None:
    from rlrs.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, r in fam["methods"].items():
        xs = list(range(1, len(r["lowest_after"]) + 1))
        conf = (r.get("confirmed") or {}).get("mean")
        ax.step(xs, r["lowest_after"], where="post",
                label=f"{m} (chosen point on 3 new seeds: {'-' if conf is None else f'{conf:.4f}'})")
    ax.set_xlabel("evaluations")
    ax.set_ylabel("lowest final eval loss seen so far (seed 0)")
    ax.set_title(f"{fam['preset']}: tuners at a budget of {fam['budget']}")
    ax.legend(frameon=False, fontsize=8)
    results.mkdir(parents=True, exist_ok=True)
    _save(fig, results / f"tuners-{family}.png")
