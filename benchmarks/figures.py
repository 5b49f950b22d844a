"""Redraw the figures in ``benchmarks/results`` that are drawn from stored results alone, without
training anything (after a change to how rlrs draws figures):

    PYTHONPATH=. python benchmarks/figures.py

- ``evidence-speedup.png`` and ``tuners-{moe,dense}.png`` from ``evidence.json``;
- ``width/*/width_transfer.png`` from each ``results.json`` beside it.

Every other figure there (loss curves, lr-grids, spikes, the zoo's curves) reads the runs' own logs,
which are not kept in the repository: it is redrawn by the benchmark that trained them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import evidence  # noqa: E402  (benchmarks/evidence.py)
import tuners  # noqa: E402  (benchmarks/tuners.py)

from rlrs.experiments.width_transfer import load, plot  # noqa: E402

RESULTS = HERE / "results"


def main() -> int:
    made = evidence.figures(RESULTS / "no-runs")  # the runs are not here: only the figure from evidence.json
    for family, fam in json.loads((RESULTS / "evidence.json").read_text()).get("tuners", {}).items():
        tuners._plot(family, fam, RESULTS)
        made.append(RESULTS / f"tuners-{family}.png")
    for path in sorted((RESULTS / "width").glob("*/results.json")):
        made.append(plot(load(path), path.parent / "width_transfer.png"))
    for p in made:
        print(f"figure: {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
