"""The strategy zoo's building blocks: :mod:`~rlrs.zoo.tasks` (offline tasks, their models, the
loop that trains one: a run kind of the engine), :mod:`~rlrs.zoo.strategies` (the learning-rate
strategies), :mod:`~rlrs.zoo.dals` (the DALS schedule) and :mod:`~rlrs.zoo.finetune` (the
pretrained encoder and its datasets). The ``rlrs zoo`` command is :mod:`rlrs.experiments.zoo`.
"""

# Before the layout of experiments/ and zoo/, rlrs.zoo was the command's module: its names fail
# with the place they moved to rather than an AttributeError that leaves the user guessing.
# Some were renamed since (the command took the experiments' shape: run, save, load, render).
_COMMAND = {name: name for name in ("Cell", "ZooResult", "accuracy_text", "listing", "load_results", "parse_names",
                                    "ranks", "run_zoo", "add_commands", "cmd_zoo")}
_COMMAND.update(merge_results="merge", report="markdown", write_outputs="save and render")


def __getattr__(name: str):
    if name in _COMMAND:
        raise ImportError(f"rlrs.zoo.{name} moved to rlrs.experiments.zoo.{_COMMAND[name]}: the `zoo` command is "
                          "rlrs.experiments.zoo, rlrs.zoo holds its tasks and strategies")
    raise AttributeError(f"module 'rlrs.zoo' has no attribute {name!r}")
