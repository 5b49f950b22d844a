"""Coordinate check: does every layer's activation scale stay flat as the model widens?

    $ rlrs coord-check --model tiny-dense --widths 32,64,128,256 --parametrization mup --base-width 32

or from Python::

    >>> from rlrs.experiments.coord_check import coord_check, load, run
    >>> res = coord_check("tiny-dense", [32, 64, 128], parametrization="mup", base_width=32, steps=3,
    ...                   out="runs/coord-check")                                          # doctest: +SKIP
    >>> res.slope("logits", step=3)                                                        # doctest: +SKIP
    >>> load("runs/coord-check") == res                                                    # doctest: +SKIP
    True

``coord_check`` is :func:`run` (measures; writes nothing), :func:`save` (``coord_check.json``, the
:class:`CoordCheck`) and :func:`render` (``coord_check.png`` and ``coord_check.md``, the slopes)
in one call. Unlike the other experiments it trains no runs of the engine: each width trains a few
steps in this process (no run directories, so no ``executor``, ``workers`` or ``progress``).

For each width the model size is rebuilt with ``d_model = width`` (heads kept, as muP here assumes),
trained ``steps`` AdamW steps at one plan and η_base on fixed random token batches, and the
root-mean-square of each layer's output is recorded at init and after every step: the embedding's
output, each block's attention and feed-forward outputs (averaged over blocks) and the logits.
The slope of log RMS against log width, per layer and step, is what to read (the mup package's
plots show the same thing): under muP every slope stays near 0 after training starts; under SP
with one η for every width the output logits and the hidden updates grow with width (a positive
slope), which is why the best η moves as the model widens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import config as _config
from .. import files
from ..config import ConfigError
from ..models import Transformer, build_model, get_size, width_factors
from ..optim import RelativeLR, param_groups
from ..plan import Plan
from ..presets import resolve
from .arms import python_call

LAYERS = ("embedding", "attention", "feedforward", "logits")


@dataclass(frozen=True)
class CoordCheck:
    """What :func:`run` measured: the RMS of each layer's output, ``rms[layer][i][t]`` for width
    ``widths[i]`` after ``t`` steps (t = 0: at init), averaged over ``seeds``.
    ``coord_check.json`` is ``rlrs.config.to_dict`` of it, and ``rlrs.config.from_dict(CoordCheck,
    json.load(f))`` (:func:`load`) reads it back. The slopes are derived (:meth:`slope`)."""

    preset: str
    parametrization: str
    base_width: int | None
    widths: tuple[int, ...]
    steps: int
    seeds: int
    base_lr: float
    rms: dict[str, tuple[tuple[float, ...], ...]]
    command: str = ""  # what made it (the command line, or the Python call)

    def slope(self, layer: str, step: int) -> float:
        """Least-squares slope of log RMS against log width for ``layer`` after ``step`` steps."""
        x = np.log(np.asarray(self.widths, dtype=float))
        y = np.log(np.asarray([r[step] for r in self.rms[layer]], dtype=float))
        return float(np.polyfit(x, y, 1)[0])

    def slopes(self) -> dict[str, list[float]]:
        return {layer: [self.slope(layer, t) for t in range(self.steps + 1)] for layer in self.rms}


def _hooks(model: Transformer, out: dict[str, list[float]]):
    def rms(name):
        def hook(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            out.setdefault(name, []).append(float(y.detach().float().pow(2).mean().sqrt()))
        return hook

    handles = [model.embed.register_forward_hook(rms("embedding"))]
    for block in model.blocks:
        handles.append(block.attn.register_forward_hook(rms("attention")))
        handles.append((block.moe if block.is_moe else block.mlp).register_forward_hook(rms("feedforward")))
    return handles


def run(
    model: str = "tiny-dense",
    widths: Sequence[int] = (32, 64, 128, 256),
    *,
    parametrization: str = "sp",
    base_width: int | None = None,
    plan: str | Plan = "uniform",
    base_lr: float | None = None,
    steps: int = 3,
    seeds: int = 2,
    batch_size: int = 8,
    command: str | None = None,
) -> CoordCheck:
    """Train the model size ``model`` at each width for ``steps`` steps and record each layer's
    output RMS. Writes nothing: :func:`save` and :func:`render` do, :func:`coord_check` all three."""
    widths = sorted({int(w) for w in widths})
    if len(widths) < 2:
        raise ConfigError(f"widths: at least two widths to fit a slope, got {list(widths)}; e.g. 32,64,128,256")
    if parametrization == "mup" and base_width is None:
        raise ConfigError("base_width: muP needs the width its learning rates were tuned at (--base-width), "
                          f"e.g. the smallest width, {widths[0]}")
    if steps < 1 or seeds < 1:
        raise ConfigError(f"steps, seeds: at least 1 each, got steps={steps}, seeds={seeds}")
    p = plan if isinstance(plan, Plan) else resolve(plan)
    if base_lr is not None:
        p = dataclasses.replace(p, base_lr=base_lr)
    base = get_size(model)
    rms: dict[str, list[tuple[float, ...]]] = {layer: [] for layer in LAYERS}
    for w in widths:
        try:
            cfg = dataclasses.replace(base, d_model=w, parametrization=parametrization,
                                      base_width=base_width if parametrization == "mup" else None)
        except ConfigError as err:
            raise ConfigError(f"widths: {w}: {err}") from None
        per_seed = []
        for seed in range(seeds):
            per_seed.append(_one(cfg, p, steps, seed, batch_size))
        for layer in LAYERS:
            rms[layer].append(tuple(float(np.mean([s[layer][t] for s in per_seed])) for t in range(steps + 1)))
    if command is None:
        command = python_call("coord_check", "coord_check", model=model, widths=widths,
                              parametrization=parametrization, base_width=base_width,
                              plan=plan if isinstance(plan, str) else None, base_lr=base_lr, steps=steps, seeds=seeds)
    return CoordCheck(model, parametrization, base_width, tuple(widths), steps, seeds, p.base_lr,
                      {layer: tuple(v) for layer, v in rms.items()}, command)


def _one(cfg, plan: Plan, steps: int, seed: int, batch_size: int) -> dict[str, list[float]]:
    torch.manual_seed(seed)
    model = build_model(cfg)
    groups = param_groups(model, plan, width_factors=width_factors(cfg))
    opt = torch.optim.AdamW(groups, lr=plan.base_lr, betas=(0.9, 0.95))
    # No warmup and a long horizon: the first steps run at η_base × λ_start, since the check asks
    # how one update scales with width, not what the schedule does.
    sched = RelativeLR(opt, dataclasses.replace(plan, warmup=0.0), total_steps=100_000)
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randint(0, cfg.vocab_size, (batch_size, cfg.seq_len), generator=g)
    trace: dict[str, list[float]] = {layer: [] for layer in LAYERS}
    for t in range(steps + 1):
        seen: dict[str, list[float]] = {}
        handles = _hooks(model, seen)
        out = model(x[:, :-1], x[:, 1:])
        for h in handles:
            h.remove()
        for layer in ("embedding", "attention", "feedforward"):
            trace[layer].append(float(np.mean(seen[layer])))
        trace["logits"].append(float(out.logits.detach().float().pow(2).mean().sqrt()))
        if t == steps:
            break
        opt.zero_grad(set_to_none=True)
        (out.loss + out.aux_loss).backward()
        opt.step()
        sched.step()
    return trace


def plot(res: CoordCheck, path: str | Path) -> Path:
    """One panel per layer: RMS against width (log-log), one line per step."""
    from ..plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, len(LAYERS), figsize=(4 * len(LAYERS), 3.5))
    for ax, layer in zip(axes, LAYERS):
        for t in range(res.steps + 1):
            ax.plot(res.widths, [r[t] for r in res.rms[layer]], marker="o", label=f"step {t} (slope {res.slope(layer, t):+.2f})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("width (d_model)")
        ax.legend(frameon=False, fontsize=7)
    axes[0].set_ylabel("output RMS")
    base = f", base width {res.base_width}" if res.parametrization == "mup" else ""
    fig.suptitle(f"{res.preset}: {res.parametrization}{base}, η_base {res.base_lr:g}, {res.seeds} seeds")
    return _save(fig, path)


def slope_text(res: CoordCheck) -> str:
    lines = [f"slope of log RMS against log width ({res.parametrization}; 0 = width-independent):",
             "layer        " + "  ".join(f"step {t:>2}" for t in range(res.steps + 1))]
    for layer, s in res.slopes().items():
        lines.append(f"{layer:<12} " + "  ".join(f"{v:+7.2f}" for v in s))
    return "\n".join(lines)



# --- the files -----------------------------------------------------------------------------------


def save(result: CoordCheck, out: str | Path) -> Path:
    """Write ``out/coord_check.json``."""
    path = files.make_dir(out, "--out") / "coord_check.json"
    files.write_json(path, _config.to_dict(result))
    return path


def load(path: str | Path) -> CoordCheck:
    """The :class:`CoordCheck` in a ``coord_check.json`` (or the directory holding it), files of
    earlier versions included (they also held the slopes, which are derived)."""
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k != "slopes"}

    return _config.load_typed(CoordCheck, path, "coord_check.json", "rlrs coord-check", "coordinate check", upgrade)


def render(result: CoordCheck, out: str | Path) -> list[Path]:
    """Write ``coord_check.png`` (:func:`plot`) and ``coord_check.md`` (the slopes, :func:`markdown`)
    into ``out``, from the result alone."""
    out = files.make_dir(out, "--out")
    png = plot(result, out / "coord_check.png")
    md = out / "coord_check.md"
    files.atomic_write_text(md, markdown(result))
    return [png, md]


def markdown(res: CoordCheck) -> str:
    """``coord_check.md``: the slope of log RMS against log width per layer and step, and the RMS
    per width after the last step."""
    base = f", base width {res.base_width}" if res.parametrization == "mup" else ""
    L = [f"# rlrs coord-check: {res.preset}, {res.parametrization}{base}\n"]
    if res.command:
        L.append(f"`{res.command}`\n")
    L.append(f"Each layer's output RMS at widths {', '.join(map(str, res.widths))} (d_model), at init and after each "
             f"of {res.steps} AdamW step{'s' * (res.steps != 1)} at η_base {res.base_lr:g}, mean over {res.seeds} "
             f"seed{'s' * (res.seeds != 1)}. The slope of log RMS against log width is what to read: 0 is "
             "width-independent; under muP every slope stays near 0 after training starts, under SP with one η "
             "for every width the hidden layers' and the logits' grow.\n")
    L.append("## Slope of log RMS against log width\n")
    L.append("| layer | " + " | ".join(f"step {t}" for t in range(res.steps + 1)) + " |")
    L.append("|---|" + "---|" * (res.steps + 1))
    for layer, s in res.slopes().items():
        L.append(f"| {layer} | " + " | ".join(f"{v:+.2f}" for v in s) + " |")
    L.append(f"\n## RMS after step {res.steps}\n")
    L.append("| layer | " + " | ".join(f"width {w}" for w in res.widths) + " |")
    L.append("|---|" + "---|" * len(res.widths))
    for layer, per_width in res.rms.items():
        L.append(f"| {layer} | " + " | ".join(f"{r[res.steps]:.4g}" for r in per_width) + " |")
    L.append("\n![output RMS against width](coord_check.png)\n")
    return "\n".join(L) + "\n"


def coord_check(model: str = "tiny-dense", widths: Sequence[int] = (32, 64, 128, 256), *,
                out: str | Path = "runs/coord-check", **options) -> CoordCheck:
    """What ``rlrs coord-check`` does, in one call: :func:`run` (``options`` are its keywords),
    then :func:`save` and :func:`render` into ``out``."""
    result = run(model, widths, **options)
    save(result, out)
    render(result, out)
    return result


# --- command line -----------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Register ``rlrs coord-check``."""
    from ..models import PARAMETRIZATIONS
    from ..options import add_model_arg, add_out_arg, add_plan_arg, add_seeds_arg, add_steps_arg, add_widths_arg, default_of

    p = sub.add_parser("coord-check", help="activation scale of every layer against width, at init and after a few steps",
                       description="Rebuild a model size at several widths (heads kept), train a few AdamW steps at one "
                                   "η_base and plot each layer's output RMS against width: under muP the slopes stay "
                                   "near 0, under SP they grow. Writes coord_check.json, coord_check.png and "
                                   "coord_check.md (the slopes).")
    add_model_arg(p, default_of(run, "model"))
    add_widths_arg(p, default_of(run, "widths"))
    p.add_argument("--parametrization", default=default_of(run, "parametrization"), choices=PARAMETRIZATIONS,
                   help=f"sp or mup (default: {default_of(run, 'parametrization')})")
    p.add_argument("--base-width", type=int, default=None, help="muP's base width (needed with --parametrization mup)")
    add_plan_arg(p, default_of(run, "plan"))
    p.add_argument("--base-lr", type=float, default=None, help="η_base (default: the plan's)")
    add_steps_arg(p, default_of(run, "steps"))
    add_seeds_arg(p, default_of(run, "seeds"))
    add_out_arg(p, default_of(coord_check, "out"))
    p.set_defaults(func=cmd_coord_check)


def cmd_coord_check(args) -> int:
    from ..options import command_line, parse_widths

    extra = ["--widths", args.widths, "--parametrization", args.parametrization, "--plan", args.plan]
    extra += ["--base-width", str(args.base_width)] if args.base_width is not None else []
    extra += ["--base-lr", f"{args.base_lr:g}"] if args.base_lr is not None else []
    extra += ["--seeds", str(args.seeds), "--out", str(args.out)]
    res = run(args.model, parse_widths(args.widths), parametrization=args.parametrization, base_width=args.base_width,
              plan=args.plan, base_lr=args.base_lr, steps=args.steps, seeds=args.seeds,
              command=command_line("coord-check", args, extra))
    out = files.make_dir(Path(args.out), "--out")
    record = save(res, out)
    png, _ = render(res, out)
    print(slope_text(res))
    print(f"results: {record}  figure: {png}")
    return 0
