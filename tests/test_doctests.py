"""The usage examples in docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["rlrs.analysis", "rlrs.components", "rlrs.config", "rlrs.optim", "rlrs.options", "rlrs.factors", "rlrs.plan",
           "rlrs.presets", "rlrs.schedules", "rlrs.tune.samplers", "rlrs.tune.study", "rlrs.engine", "rlrs.data.data_config",
           "rlrs.experiments.arms", "rlrs.experiments.compare", "rlrs.experiments.coord_check",
           "rlrs.experiments.width_transfer", "rlrs.experiments.zoo", "rlrs.experiments.demo",
           "rlrs.zoo.dals", "rlrs.zoo.strategies", "rlrs.zoo.tasks", "rlrs.zoo.finetune", "rlrs.experiments.auto"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0
