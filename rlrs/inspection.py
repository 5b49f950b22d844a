"""What ``rlrs inspect`` shows: each component's share of a model, and the plan's LRs over time.

    >>> from rlrs.inspection import load_model, component_table
    >>> model = load_model("tiny-moe")
    >>> [row["component"] for row in component_table(model)][:3]
    ['embedding', 'unembedding', 'attention']

Models are built on the ``meta`` device: no memory is allocated, so the 5.67B-parameter
``moe-906m`` preset or a large Hugging Face config inspects instantly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .components import COMPONENTS, Rule, classify, component_names, tied_parameters
from .config import ConfigError, require
from .plan import Plan


def load_model(spec: str, sets: Mapping[str, Any] | None = None) -> nn.Module:
    """An rlrs size preset name (as ``rlrs train`` builds it), a Hugging Face ``config.json``, or
    a model directory holding one, built on ``meta`` (no weights are read, nothing is fetched)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{spec}: a directory without config.json; give a Hugging Face model directory")
        path, spec = path / "config.json", str(path / "config.json")
    if spec.endswith(".json"):
        if not path.is_file():
            raise ConfigError(f"{spec}: no such Hugging Face config file")
        transformers = require("transformers", "hf")
        config_dict = json.loads(path.read_text())
        if "model_type" not in config_dict:
            raise ConfigError(f"{spec}: not a Hugging Face model config (it has no 'model_type')")
        config = transformers.AutoConfig.for_model(**config_dict)
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config)
    from . import models
    from .train import run_config

    # The model as rlrs trains it: the vocabulary follows the preset's tokenizer.
    cfg = run_config(spec, sets=sets).model
    with torch.device("meta"):
        return models.build_model(cfg)


def component_table(model: nn.Module, rules: Sequence[Rule] | None = None) -> list[dict]:
    """Rows of (component, tensors, params, share of all trainable params).

    Each tensor counts once; a tensor tied across components (GPT-2's embedding and unembedding)
    gets its own row, ``embedding+unembedding (tied)``: it follows ``plan.tied``, by default the
    unembedding (``rlrs.optim.DEFAULT_TIED``).
    """
    comp = classify(model, rules)
    aliases = {name: group for group in tied_parameters(model) for name in group}
    counts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():  # each shared tensor once, under its first name
        if not p.requires_grad:
            continue
        comps = sorted({comp[n] for n in aliases.get(name, (name,))}, key=COMPONENTS.index)
        label = comps[0] if len(comps) == 1 else "+".join(comps) + " (tied)"
        counts.setdefault(label, [0, 0])
        counts[label][0] += 1
        counts[label][1] += p.numel()
    total = sum(n for _, n in counts.values())
    order = lambda label: COMPONENTS.index(label.split("+")[0].split(" ")[0])
    return [
        {"component": c, "tensors": t, "params": n, "share": n / total if total else 0.0}
        for c, (t, n) in sorted(counts.items(), key=lambda kv: order(kv[0]))
    ]


def format_table(rows: Sequence[dict], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table (numbers right-aligned)."""
    headers = list(headers or columns)
    cells = [[_fmt(r[c]) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(r[c], (int, float)) for r in rows) for c in columns]
    def line(vals):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()
    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if 0 < abs(v) < 1e-3 or abs(v) >= 1e5:
        return f"{v:.3e}"
    return f"{v:.4g}"


def parse_steps(spec: str, total_steps: int) -> list[int]:
    """``"0,1%,50%,100%,1234"`` to distinct step numbers, in order (``100%`` is the last step,
    ``total_steps - 1``; a percentage that rounds to a step already listed is listed once)."""
    steps = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if part.endswith("%"):
                frac = float(part[:-1]) / 100
                if not 0 <= frac <= 1:
                    raise ValueError
                steps.append(min(total_steps - 1, round(frac * total_steps)))
            else:
                step = int(part)
                if not 0 <= step < total_steps:
                    raise ValueError
                steps.append(step)
        except ValueError:
            raise ConfigError(
                f"--at: {part!r} is not a step in [0, {total_steps - 1}] or a percentage in [0%, 100%]"
            ) from None
    return list(dict.fromkeys(steps))


def lr_table(plan: Plan, components: Sequence[str], steps: Sequence[int], total_steps: int,
             width_factors: Mapping[str, float] | None = None) -> list[dict]:
    """Rows of each component's LR at the given steps (times its muP width factor, if any)."""
    components = component_names(components)
    w = width_factors or {}
    return [{"component": c, **{f"step {s}": plan.lr(c, s, total_steps, width=w.get(c, 1.0)) for s in steps}}
            for c in components]


def tied_report(model: nn.Module) -> list[str]:
    """One line per group of parameter names that share a tensor."""
    comp = classify(model)
    return [" = ".join(f"{n} ({comp[n]})" for n in group) for group in tied_parameters(model)]
