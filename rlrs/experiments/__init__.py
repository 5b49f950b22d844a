"""The experiment commands, one module each: what a command trains, measures and reports.

- :mod:`~rlrs.experiments.compare` (``rlrs compare``: the paper's speed-up, computed in
  :func:`rlrs.analysis.speedup`), :mod:`~rlrs.experiments.lr_grid` (``rlrs lr-grid``: the η_base
  search), :mod:`~rlrs.experiments.arms` (what the two share), :mod:`~rlrs.experiments.report`
  (compare's markdown and figures; lr-grid's are in ``lr_grid.render``),
- :mod:`~rlrs.experiments.transfer` (``rlrs transfer``), :mod:`~rlrs.experiments.ablate`
  (``rlrs ablate``), :mod:`~rlrs.experiments.width_transfer` (``rlrs width-transfer``),
- :mod:`~rlrs.experiments.zoo` (``rlrs zoo``; its tasks and strategies are :mod:`rlrs.zoo`),
- :mod:`~rlrs.experiments.demo` (``rlrs demo``), :mod:`~rlrs.experiments.coord_check`
  (``rlrs coord-check``), :mod:`~rlrs.experiments.auto` (``rlrs auto``).

Every module here has one shape (lr-grid's is the smallest): ``run(...)`` returning a frozen,
typed result, ``save``, ``load`` (through :func:`rlrs.config.load_typed`), ``render(result, out)``
writing its report, a function named after the command doing the three, and
``add_commands(subparsers)`` registering its command, listed in ``rlrs/cli.py``. It describes its
runs as specs for :mod:`rlrs.engine` (``coord_check`` alone trains a few steps itself).
"""
