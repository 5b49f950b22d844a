"""rlrs: decoupled relative learning-rate schedules for PyTorch.

Three lines in your own training loop::

    import rlrs
    plan = rlrs.presets.get("paper-moe")
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
    sched = rlrs.RelativeLR(opt, plan, total_steps)   # sched.step() after each opt.step()

A script driven by ``rlrs compare/tune --command`` reads its plan with ``rlrs.script.plan()`` and
reports eval losses with ``rlrs.report(step, loss)`` (:mod:`rlrs.script`). ``rlrs.inspect(model,
plan, total_steps=...)`` prints each component's share, the schedule each tensor follows and the LRs.

The core (``schedules``, ``components``, ``factors``, ``plan``, ``presets``, ``optim``, ``script``) imports only torch.
The layout: the library at the top of the package, ``rlrs.experiments`` (one module per command),
``rlrs.zoo`` (the strategy zoo's tasks and strategies), ``rlrs.data`` and ``rlrs.tune``;
docs/design.md maps it.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

from . import factors, presets, schedules, script
from .components import COMPONENTS, ClassificationError, classify, tied_parameters
from .config import ConfigError
from .inspection import inspect
from .optim import RelativeLR, assign_components, muon_split, param_groups
from .plan import ComponentPlan, Plan
from .script import report

__version__ = "0.1.0"

# Modules that moved when the experiments got their own package: the old name still imports, as a
# module that takes each name from the new module(s) and warns once where the old name is imported.
MOVED = {
    "rlrs.compare": ("rlrs.experiments.compare", "rlrs.experiments.lr_grid"),
    "rlrs.transfer": ("rlrs.experiments.transfer", "rlrs.experiments.ablate"),
    "rlrs.widths": ("rlrs.experiments.width_transfer",),
    "rlrs.demo": ("rlrs.experiments.demo",),
    "rlrs.coordcheck": ("rlrs.experiments.coord_check",),
    "rlrs.reporting": ("rlrs.experiments.report",),
    "rlrs.tasks": ("rlrs.zoo.tasks",),
    "rlrs.strategies": ("rlrs.zoo.strategies",),
    "rlrs.dals": ("rlrs.zoo.dals",),
    "rlrs.finetune": ("rlrs.zoo.finetune",),
}
# rlrs.zoo, the zoo command's module before, is now the package of its building blocks; the
# command's names there raise an ImportError naming rlrs.experiments.zoo (rlrs/zoo/__init__.py).


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import rlrs.compare`` -> a module whose names are those of ``MOVED["rlrs.compare"]``."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def exec_module(self, module: types.ModuleType) -> None:
        old, new = module.__name__, MOVED[module.__name__]
        warnings.warn(f"{old} moved to {' and '.join(new)}; import from there (the old name goes away in a "
                      "later release)", DeprecationWarning, stacklevel=2)
        targets = [importlib.import_module(m) for m in new]

        def __getattr__(name: str):
            for t in targets:
                if hasattr(t, name):
                    return getattr(t, name)
            raise AttributeError(f"module {old!r} (now {' and '.join(new)}) has no attribute {name!r}")

        module.__getattr__ = __getattr__
        module.__doc__ = f"Moved to {' and '.join(new)}."


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.insert(0, _Moved())  # before an editable install's finder, which maps names to files

__all__ = [
    "COMPONENTS",
    "muon_split",
    "ClassificationError",
    "ComponentPlan",
    "ConfigError",
    "Plan",
    "RelativeLR",
    "assign_components",
    "classify",
    "factors",
    "inspect",
    "param_groups",
    "presets",
    "report",
    "schedules",
    "script",
    "tied_parameters",
]
