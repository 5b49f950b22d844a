"""The experiment commands, one module each: what a command trains, measures and reports.

- :mod:`~rlrs.experiments.compare` (``rlrs compare``: the paper's speed-up, computed in
  :func:`rlrs.analysis.speedup`), :mod:`~rlrs.experiments.lr_grid` (``rlrs lr-grid``: the η_base
  search), :mod:`~rlrs.experiments.report` (their markdown and figures),
- :mod:`~rlrs.experiments.transfer` (``rlrs transfer``), :mod:`~rlrs.experiments.ablate`
  (``rlrs ablate``), :mod:`~rlrs.experiments.width_transfer` (``rlrs width-transfer``),
- :mod:`~rlrs.experiments.zoo` (``rlrs zoo``; its tasks and strategies are :mod:`rlrs.zoo`),
- :mod:`~rlrs.experiments.demo` (``rlrs demo``), :mod:`~rlrs.experiments.coord_check`
  (``rlrs coord-check``).

A new experiment is a new module here: ``run(...)`` returning a typed result, ``render(result,
out)`` writing its report, ``add_commands(subparsers)`` registering its command, listed in
``rlrs/cli.py``. It describes its runs as specs for :mod:`rlrs.engine` and never trains itself.
"""
