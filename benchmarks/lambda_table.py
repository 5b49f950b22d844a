"""Print tuned λ tables beside the paper's (tables 4 and 5) as markdown, for BENCHMARKS.md.

    python benchmarks/lambda_table.py paper-moe bench/tune-moe/tuned.toml bench/tune-moe-prune/tuned.toml
    python benchmarks/lambda_table.py paper-dense bench/tune-dense/tuned.toml

Each argument is a plan preset or a plan file; a tune directory's ``tuned_config.json`` (a moved
``model.init_scale``) is read when it sits beside the plan file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlrs import presets
from rlrs.components import COMPONENTS


def _label(spec: str) -> str:
    p = Path(spec)
    return p.parent.name if p.exists() else spec


def _init_scale(spec: str) -> str:
    cfg = Path(spec).parent / "tuned_config.json"
    if Path(spec).exists() and cfg.exists():
        return f"{json.loads(cfg.read_text()).get('model', {}).get('init_scale', 1.0):g}"
    return "1"


def table(specs: list[str]) -> str:
    """One column per plan: η_base, λ_base, weight decay, init scale, then each component's λs."""
    plans = [presets.resolve(s) for s in specs]
    # An MoE model has no dense feed-forward, a dense one no router or experts.
    is_moe = any(p.component(c) != p.component("other") for p in plans for c in ("router", "experts"))
    skip = {"other", "feedforward"} if is_moe else {"other", "router", "experts"}
    keep = [c for c in COMPONENTS if c not in skip]
    head = "| | " + " | ".join(_label(s) for s in specs) + " |"
    rows = [head, "|---" * (len(specs) + 1) + "|"]
    rows.append("| η_base | " + " | ".join(f"{p.base_lr:g}" for p in plans) + " |")
    rows.append("| λ_base | " + " | ".join(f"{p.final_fraction:g}" for p in plans) + " |")
    rows.append("| weight decay | " + " | ".join(f"{p.weight_decay:g}" for p in plans) + " |")
    rows.append("| init scale | " + " | ".join(_init_scale(s) for s in specs) + " |")
    for c in keep:
        cells = []
        for p in plans:
            cp = p.component(c)
            cells.append(f"{cp.start:g} → {cp.end:g}")
        rows.append(f"| {c} λ_start → λ_end | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("plans", nargs="+", help="plan presets or plan files")
    print(table(ap.parse_args().plans))


if __name__ == "__main__":
    main()
