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
"""

from . import factors, presets, schedules, script
from .components import COMPONENTS, ClassificationError, classify, tied_parameters
from .config import ConfigError
from .inspection import inspect
from .optim import RelativeLR, assign_components, muon_split, param_groups
from .plan import ComponentPlan, Plan
from .script import report

__version__ = "0.1.0"

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
