"""One command-line layer: a flag several commands share has one name, dest, type, default and
help everywhere; every default ``--help`` shows is the one the API or dataclass owns; old spellings
keep working. Parsers are built, nothing trains."""

import argparse
import re
from pathlib import Path

import pytest

from rlrs import cli, presets
from rlrs.experiments import arms, compare, lr_grid
from rlrs.experiments import coord_check
from rlrs.experiments.demo import demo
from rlrs.experiments import auto
from rlrs.engine import default_workers, run_dir
from rlrs.executors import SlurmConfig
from rlrs.inspection import DEFAULT_AT, inspect
from rlrs.models import DEFAULT_SIZE
from rlrs.options import HELP, default_of, sets_from_args, target_from_args
from rlrs.targets import CommandTarget, PresetTarget
from rlrs.experiments import ablate
from rlrs.experiments.transfer import run as run_transfer
from rlrs.tune.spec import Pruning, TuneSpec
from rlrs.tune.study import StudyOptions
from rlrs.experiments import width_transfer
from rlrs.experiments.zoo import run_zoo

# Flags whose default is each command's own (read from that command's API, checked in
# test_every_default_shown_is_the_apis): their help differs only in the "(default: ...)" it ends with.
OWN_DEFAULT = {"--model", "--out", "--plan", "--seeds", "--steps", "--widths"}
# plot-plan's --model trains nothing: it names any model (an HF config, MODULE:ATTR) whose components are drawn.
OWN_MEANING = {("plot-plan", "--model")}


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, p in sub.choices.items():
        if p not in out.values():  # an alias (rlrs presets) is the same parser
            out[name] = p
    return out


COMMANDS = _commands()


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in p._actions
            if a.option_strings and a.help is not argparse.SUPPRESS and not isinstance(a, argparse._HelpAction)}


def _help(action: argparse.Action) -> str:
    return action.help % dict(vars(action), prog="rlrs") if "%" in action.help else action.help


def _without_default(text: str) -> str:
    for tail in (" (required)", " (default: "):
        if tail in text:
            text = text[:text.index(tail)]
    return text


def test_every_command_is_covered():
    assert {"train", "demo", "inspect", "coord-check", "sizes", "plot-plan", "compare", "lr-grid", "tune", "transfer",
            "ablate", "width-transfer", "zoo", "fetch", "auto"} == set(COMMANDS)


def test_a_shared_flag_is_the_same_everywhere():
    where: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, p in COMMANDS.items():
        for flag, action in _flags(p).items():
            if (name, flag) not in OWN_MEANING:
                where.setdefault(flag, []).append((name, action))
    shared = {flag: uses for flag, uses in where.items() if len(uses) > 1}
    # The target group, the run-length and worker flags are among them (else this test checks little).
    assert {"--model", "--command", "--config", "--set", "--steps", "--workers", "--seeds", "--out", "--plan"} <= set(shared)
    for flag, uses in shared.items():
        (first, a), *rest = uses
        for name, b in rest:
            what = f"{flag}: rlrs {first} and rlrs {name} differ in"
            assert (b.dest, b.type, b.choices, b.nargs, b.metavar, type(b)) == (a.dest, a.type, a.choices, a.nargs,
                                                                                a.metavar, type(a)), what
            assert _without_default(_help(b)) == _without_default(_help(a)), f"{what} help"
            if flag not in OWN_DEFAULT:
                assert (b.default, b.required) == (a.default, a.required), f"{what} default"
                assert _help(b) == _help(a), f"{what} help"


def test_one_word_per_flag():
    """One spelling per concept: no command has the old or the singular spellings."""
    for name, p in COMMANDS.items():
        flags = set(_flags(p))
        assert not flags & {"--preset", "--total-steps", "--task", "--target-command"}, name
    assert "--tasks" in _flags(COMMANDS["zoo"]) and "--strategies" in _flags(COMMANDS["zoo"])


def _api_defaults() -> dict[tuple[str, str], object]:
    """(command, dest) -> the default its owner gives: an API function's parameter, a dataclass
    field, or (where no function owns it) the CLI's own named constant."""
    d: dict[tuple[str, str], object] = {
        ("compare", "seeds"): default_of(compare.run, "seeds"),
        ("compare", "metric"): default_of(compare.run, "metric"),
        ("lr-grid", "seeds"): default_of(lr_grid.run, "seeds"),
        ("lr-grid", "extend"): default_of(lr_grid.run, "extend"),
        ("lr-grid", "points"): default_of(lr_grid.run, "points"),
        ("transfer", "seeds"): default_of(run_transfer, "seeds"),
        ("transfer", "grid_seeds"): default_of(run_transfer, "grid_seeds"),
        ("transfer", "extend"): default_of(run_transfer, "extend"),
        ("ablate", "seeds"): default_of(ablate.run, "seeds"),
        ("ablate", "kind"): default_of(ablate.run, "kind"),
        ("width-transfer", "seeds"): default_of(width_transfer.run, "seeds"),
        ("width-transfer", "extend"): default_of(width_transfer.run, "extend"),
        ("width-transfer", "iwd"): default_of(width_transfer.run, "iwd"),
        ("width-transfer", "variants"): ",".join(default_of(width_transfer.run, "variants")),
        ("zoo", "seeds"): default_of(run_zoo, "seeds"),
        ("zoo", "strategies"): "all",
        ("tune", "seeds"): default_of(TuneSpec, "seeds"),
        ("tune", "search_seed"): default_of(TuneSpec, "search_seed"),
        ("tune", "min_improvement"): default_of(TuneSpec, "min_improvement"),
        ("tune", "sampler"): "local",
        ("coord-check", "model"): default_of(coord_check.run, "model"),
        ("coord-check", "widths"): ",".join(map(str, default_of(coord_check.run, "widths"))),
        ("coord-check", "parametrization"): default_of(coord_check.run, "parametrization"),
        ("coord-check", "plan"): default_of(coord_check.run, "plan"),
        ("coord-check", "steps"): default_of(coord_check.run, "steps"),
        ("coord-check", "seeds"): default_of(coord_check.run, "seeds"),
        ("coord-check", "out"): default_of(coord_check.coord_check, "out"),
        ("inspect", "model"): DEFAULT_SIZE,
        ("inspect", "steps"): default_of(inspect, "total_steps"),
        ("inspect", "at"): DEFAULT_AT,
        ("plot-plan", "plan"): presets.default_plans(moe=True)[1],
        ("plot-plan", "steps"): default_of(inspect, "total_steps"),
        ("plot-plan", "out"): ".",
        ("demo", "out"): default_of(demo, "out"),
        ("auto", "method"): default_of(auto.run, "method"),
        ("auto", "probe"): default_of(auto.run, "probe"),
    }
    for name in COMMANDS:  # --cwd's "." is the current directory, shown in words
        if "--cwd" in _flags(COMMANDS[name]):
            d[(name, "cwd")] = default_of(CommandTarget, "cwd")
    return d


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_every_default_shown_is_the_apis():
    api = _api_defaults()
    seen = set()
    for name, p in COMMANDS.items():
        for action in p._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help is argparse.SUPPRESS:
                continue
            if action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS):
                continue  # (0 is a default: 0 == False, so not `in (False, ...)`)
            key = (name, action.dest)
            assert key in api, f"rlrs {name} {action.dest}: a default ({action.default!r}) with no owner named here"
            assert action.default == api[key], f"rlrs {name} {action.dest}: {action.default!r} != {api[key]!r}"
            if action.dest != "cwd":
                assert f"(default: {_shown(api[key])}" in _help(action).replace("%%", "%"), (name, action.dest)
            seen.add(key)
    assert seen == set(api), f"listed but not on any parser: {set(api) - seen}"


def test_defaults_applied_later_are_shown_as_their_owners():
    """Flags whose argparse default is None (a later default applies) show that later default."""
    slurm = SlurmConfig()
    expect = {
        "--workers": default_workers(),
        "--slurm-gpus": slurm.gpus, "--slurm-cpus": slurm.cpus, "--slurm-time-min": slurm.time_min,
        "--slurm-timeout-requeues": slurm.timeout_requeues, "--slurm-poll-s": slurm.poll_s,
    }
    for name, p in COMMANDS.items():
        flags = _flags(p)
        for flag, value in expect.items():
            if flag in flags:
                assert f"(default: {_shown(value)}" in _help(flags[flag]), (name, flag)
        if "--model" in flags and (name, "--model") not in OWN_MEANING and name != "coord-check":
            assert flags["--model"].default is None and _help(flags["--model"]).endswith(f"(default: {DEFAULT_SIZE})")
    tune = _flags(COMMANDS["tune"])
    assert f"(default: {default_of(TuneSpec.create, 'steps')} for a model size" in _help(tune["--steps"])
    assert f"(default: {Pruning().margin})" in _help(tune["--prune-margin"])
    assert f"(default: {StudyOptions().name})" in _help(tune["--study-name"])
    assert f"(default: {StudyOptions().poll_s:g})" in _help(tune["--poll"])


def test_help_texts_come_from_one_table():
    for name, p in COMMANDS.items():
        for flag, action in _flags(p).items():
            if flag in HELP and (name, flag) not in OWN_MEANING:
                assert _help(action).replace("%%", "%").startswith(HELP[flag]), (name, flag)


# --- old spellings ------------------------------------------------------------------------------


def _parse(argv):
    return cli.build_parser().parse_args(argv)


@pytest.mark.parametrize("name", [n for n, p in COMMANDS.items() if "--model" in _flags(p) and n != "plot-plan"])
def test_preset_still_works_and_names_model(name, capsys):
    required = {"transfer": ["--plan", "paper-dense", "--out", "o"], "train": ["--out", "o"], "tune": ["--out", "o"],
                "ablate": ["--out", "o"], "width-transfer": ["--widths", "32,64", "--out", "o"]}.get(name, [])
    args = _parse([name, "--preset", "tiny-dense", *required])
    assert args.model == "tiny-dense"
    assert "rlrs: --preset is now --model" in capsys.readouterr().err
    assert _parse([name, "--model", "tiny-dense", *required]).model == "tiny-dense"
    assert capsys.readouterr().err == ""
    assert "--preset" not in COMMANDS[name].format_help()


def test_old_spellings_are_quiet_aliases(capsys):
    assert _parse(["inspect", "tiny-moe", "--total-steps", "500"]).steps == 500
    assert _parse(["plot-plan", "--total-steps", "500"]).steps == 500
    assert _parse(["zoo", "--task", "gauss"]).tasks == "gauss"
    assert _parse(["transfer", "--plan", "p.toml", "--target-command", "python t.py", "--out", "o"]).command == "python t.py"
    assert _parse(["presets"]).func is cli.cmd_sizes
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):  # an alias keeps its type
        _parse(["inspect", "--total-steps", "many"])


def test_old_model_registry_names_still_import():
    from rlrs import models
    from rlrs.models import DEFAULT_PRESET, PRESETS, get_preset

    assert PRESETS is models.SIZES and get_preset is models.get_size and DEFAULT_PRESET == models.DEFAULT_SIZE
    assert presets.PRESETS is presets.PLANS
    assert not set(models.SIZES) & set(presets.PLANS)  # the two words name disjoint things


# --- what the target group means ------------------------------------------------------------------


def test_steps_is_train_steps_for_a_model_and_the_run_is_the_same(tmp_path):
    """--steps N is --set train.steps=N for a model size: the same run, the same directory."""
    a = _parse(["compare", "--model", "tiny-dense", "--steps", "7"])
    b = _parse(["compare", "--model", "tiny-dense", "--set", "train.steps=7"])
    c = _parse(["compare", "--model", "tiny-dense", "--steps", "7", "--set", "train.steps=9"])
    assert sets_from_args(a) == sets_from_args(b) == {"train.steps": 7} and sets_from_args(c) == {"train.steps": 9}
    spec = [target_from_args(x).spec("paper-dense", 0, sets_from_args(x)) for x in (a, b)]
    assert run_dir(tmp_path, spec[0]) == run_dir(tmp_path, spec[1])
    cmd = _parse(["compare", "--command", "python t.py", "--steps", "7", "--set", "plan.base_lr=0.001"])
    assert target_from_args(cmd) == CommandTarget("python t.py", 7, ".") and sets_from_args(cmd) == {"plan.base_lr": 0.001}
    assert target_from_args(_parse(["ablate", "--out", "o"])) == PresetTarget(DEFAULT_SIZE)


def test_target_errors_name_the_flags():
    from rlrs.config import ConfigError

    with pytest.raises(ConfigError, match="--model and --command: choose one"):
        target_from_args(_parse(["compare", "--model", "tiny-dense", "--command", "python t.py"]))
    with pytest.raises(ConfigError, match=r"--model or --command: name the model to train, e.g. --model tiny-dense"):
        target_from_args(_parse(["transfer", "--plan", "p.toml", "--out", "o"]), required=True)


@pytest.mark.parametrize("name", ["compare", "lr-grid"])
def test_compare_output_directory_is_one_rule(name):
    args = _parse([name, "--model", "tiny-dense"])
    arms.prepare_args(args, name)
    assert args.out == arms.default_out(name, PresetTarget("tiny-dense")) == Path(f"runs/{name}-tiny-dense")
    assert default_of(compare.run, "out") is None and default_of(compare.compare, "out") is None  # the API: one rule
    assert re.search(r"\(default: runs/compare-MODEL", _help(_flags(COMMANDS["compare"])["--out"]))
