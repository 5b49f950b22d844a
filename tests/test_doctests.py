"""The usage examples in docstrings run as written."""

import doctest
import importlib

import pytest

MODULES = ["rlrs.analysis", "rlrs.compare", "rlrs.components", "rlrs.config", "rlrs.coordcheck", "rlrs.optim",
           "rlrs.options", "rlrs.factors", "rlrs.plan", "rlrs.presets", "rlrs.schedules", "rlrs.tune.samplers", "rlrs.tune.study",
           "rlrs.widths", "rlrs.dals", "rlrs.strategies", "rlrs.tasks", "rlrs.zoo", "rlrs.finetune",
           "rlrs.engine", "rlrs.demo", "rlrs.auto"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0
