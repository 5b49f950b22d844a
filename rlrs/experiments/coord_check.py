"""Coordinate check: does every layer's activation scale stay flat as the model widens?

    $ rlrs coord-check --model tiny-dense --widths 32,64,128,256 --parametrization mup --base-width 32

or from Python::

    >>> from rlrs.experiments.coord_check import coord_check
    >>> res = coord_check("tiny-dense", [32, 64, 128], parametrization="mup", base_width=32, steps=3)  # doctest: +SKIP
    >>> res.slope("logits", step=3)                                                                  # doctest: +SKIP

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import ConfigError
from ..models import Transformer, build_model, get_size, width_factors
from ..optim import RelativeLR, param_groups
from ..plan import Plan
from ..presets import resolve

LAYERS = ("embedding", "attention", "feedforward", "logits")


@dataclass
class CoordCheck:
    """RMS of each layer's output: ``rms[layer][i][t]`` for width ``widths[i]`` after ``t``
    steps (t = 0: at init), averaged over ``seeds``."""

    preset: str
    parametrization: str
    base_width: int | None
    widths: list[int]
    steps: int
    seeds: int
    base_lr: float
    rms: dict[str, list[list[float]]] = field(default_factory=dict)

    def slope(self, layer: str, step: int) -> float:
        """Least-squares slope of log RMS against log width for ``layer`` after ``step`` steps."""
        x = np.log(np.asarray(self.widths, dtype=float))
        y = np.log(np.asarray([r[step] for r in self.rms[layer]], dtype=float))
        return float(np.polyfit(x, y, 1)[0])

    def slopes(self) -> dict[str, list[float]]:
        return {layer: [self.slope(layer, t) for t in range(self.steps + 1)] for layer in self.rms}

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "slopes": self.slopes()}


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


def coord_check(
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
) -> CoordCheck:
    """Train the model size ``model`` at each width for ``steps`` steps and record each layer's output RMS."""
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
    res = CoordCheck(model, parametrization, base_width, widths, steps, seeds, p.base_lr,
                     {layer: [] for layer in LAYERS})
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
            res.rms[layer].append([float(np.mean([s[layer][t] for s in per_seed])) for t in range(steps + 1)])
    return res


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

