"""``rlrs inspect`` and ``rlrs.inspect`` on every kind of model: one of rlrs's model sizes, a Hugging Face config or
model directory, the user's own ``MODULE:ATTR``, and an ``nn.Module`` in Python; which schedule a
tied tensor follows (what ``rlrs.param_groups`` gives it); and a clear error for every bad input."""

import doctest
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import rlrs
import rlrs.inspection
from rlrs.cli import main
from rlrs.components import DEFAULT_TIED
from rlrs.config import ConfigError

MODEL_PY = '''
import torch
from torch import nn


class GPT(nn.Module):
    def __init__(self, vocab=50, d=16, n_layers=2):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.h = nn.ModuleList([nn.ModuleDict({"attn": nn.Linear(d, 3 * d), "mlp": nn.Linear(d, 4 * d)})
                                for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2


class NeedsConfig(nn.Module):
    def __init__(self, config, depth=2):
        super().__init__()
        self.lin = nn.Linear(config, config)


def make_model():
    return GPT(vocab=64)


def not_a_model():
    return 42


class Helper:
    pass


model = GPT()
answer = 42
'''

# A training script: argparse at the top level, its work under __main__ (which must not run).
TRAIN_PY = '''
import argparse
from {module} import GPT

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1e-3)
args = parser.parse_args()


def make():
    return GPT(vocab=100)


if __name__ == "__main__":
    open("MAIN_RAN", "w").write("the __main__ block ran")
'''


def rlrs_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rlrs", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture
def project(tmp_path, monkeypatch, request):
    """A user's project directory: a model module (named per test, so imports never collide) and
    a training script; sys.path and sys.modules are restored afterwards."""
    name = f"usermodel_{request.node.name.split('[')[0][-20:]}_{abs(hash(str(tmp_path))) % 10**6}"
    (tmp_path / f"{name}.py").write_text(MODEL_PY)
    (tmp_path / "train.py").write_text(TRAIN_PY.format(module=name))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path, name
    for mod in set(sys.modules) - before:  # the project's own modules only
        if str(getattr(sys.modules[mod], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[mod]


def _row(text: str, component: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith(component)).split()


def _gpt2_dir(path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                            eos_token_id=0).save_pretrained(path)
    return path


# --- your own model: MODULE:ATTR ---------------------------------------------------------------------


def test_inspect_module_attr_class_factory_and_object(project, capsys):
    _, name = project
    for spec, vocab in ((f"{name}:GPT", 50), (f"{name}.py:make_model", 64), (f"{name}:model", 50)):
        assert main(["inspect", spec, "--plan", "paper-dense", "--steps", "100", "--at", "0,100%"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"model: {spec}\n")
        tied = _row(out, "embedding+unembedding (tied)")
        assert tied[2:4] == ["1", f"{vocab * 16:,}"] and tied[-1] == DEFAULT_TIED
        assert "lm_head.weight (unembedding) = wte.weight (embedding)" in out


def test_inspect_a_training_script_without_running_it(project):
    root, _ = project
    r = rlrs_cli("inspect", "train.py:make", "--plan", "paper-dense", cwd=root)  # `rlrs` from the project dir
    assert r.returncode == 0, r.stderr
    assert _row(r.stdout, "embedding+unembedding (tied)")[2:4] == ["1", "1,600"]  # make(): vocab 100 x 16
    assert not (root / "MAIN_RAN").exists()  # imported as a module: its __main__ block did not run
    r = rlrs_cli("inspect", str(root / "train.py") + ":GPT", cwd=root.parent)  # an absolute path, from elsewhere
    assert r.returncode == 0, r.stderr
    assert not (root.parent / "MAIN_RAN").exists()


@pytest.mark.parametrize("attr,words", [
    ("GTP", ["has no attribute 'GTP'", "did you mean 'GPT'", "make_model"]),
    ("NeedsConfig", ["NeedsConfig(config) needs arguments", "def make_model(): return NeedsConfig(...)",
                     ":make_model"]),
    ("not_a_model", ["not_a_model() returned 42 (int), not an nn.Module"]),
    ("answer", ["answer is 42 (int), not a model", "nn.Module class"]),
    ("Helper", ["Helper is a class, but not an nn.Module subclass"]),
])
def test_inspect_module_attr_errors_name_the_fix(project, capsys, attr, words):
    _, name = project
    assert main(["inspect", f"{name}:{attr}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlrs inspect: error: model ") and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_inspect_module_errors_name_the_fix(project, capsys):
    root, name = project
    (root / "broken.py").write_text("import torch\nx = 1 / 0\n")
    (root / "needsdep.py").write_text("import a_package_nobody_installed\n")
    (root / "exits.py").write_text("import sys\nsys.exit('usage: exits.py --data DIR')\n")
    pkg = root / f"pkg_{name}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(MODEL_PY)
    (pkg / "train.py").write_text("from .model import GPT\n")
    cases = [
        ("no_such_module_xyz:GPT", ["no module named 'no_such_module_xyz'", "path/to/file.py:NAME"]),
        ("missing/train.py:GPT", ["no such file missing/train.py"]),
        (f"{name}.py", [f"{name}.py:GPT"]),  # a file without the name of the model in it
        ("broken:x", ["raised ZeroDivisionError: division by zero", f"{root / 'broken.py'}:2"]),
        ("needsdep.py:x", ["imports 'a_package_nobody_installed', which is not installed"]),
        ("exits:x", ["exited", "if __name__ == \"__main__\""]),
        (f"{pkg.name}/train.py:GPT", ["uses relative imports", "give it as a dotted name"]),
    ]
    for spec, words in cases:
        assert main(["inspect", spec]) == 2, spec
        err = capsys.readouterr().err
        assert "Traceback" not in err
        for w in words:
            assert w in err, (spec, err)
    assert main(["inspect", f"{pkg.name}.train:GPT", "--at", "0"]) == 0  # the same file, as part of its package
    assert _row(capsys.readouterr().out, "embedding+unembedding (tied)")[-1] == DEFAULT_TIED


# --- rlrs.inspect in Python -------------------------------------------------------------------------


def test_library_inspect_prints_what_the_cli_prints(project, capsys):
    _, name = project
    assert main(["inspect", f"{name}:GPT", "--plan", "paper-dense", "--steps", "500", "--at", "0,10%,100%"]) == 0
    cli = capsys.readouterr().out
    module = __import__(name)
    got = rlrs.inspect(module.GPT(), "paper-dense", total_steps=500, at="0,10%,100%")
    printed = capsys.readouterr().out
    assert printed == str(got) + "\n"
    # The same report; only the model's label differs (a spec on the command line, the class here).
    assert printed.replace("model: GPT\n", "") == cli.replace(f"model: {name}:GPT\n", "")
    assert rlrs.inspect is rlrs.inspection.inspect and "inspect" in rlrs.__all__
    quiet = rlrs.inspect(module.GPT(), "paper-dense", total_steps=500, at=[0, "10%", 499], quiet=True)
    assert capsys.readouterr().out == "" and quiet.text == got.text
    assert [r["component"] for r in quiet.lrs] == ["embedding", "unembedding", "attention", "feedforward", "other"]
    assert quiet.lrs[1]["step 50"] == pytest.approx(rlrs.presets.get("paper-dense").lr("unembedding", 50, 500))
    assert "print() it" in repr(quiet)


@pytest.mark.parametrize("tied", [None, "embedding", "unembedding"])
def test_the_tied_tensor_follows_what_param_groups_gives_it(tied):
    from rlrs.optim import DEFAULT_TIED

    model = nn.ModuleDict({"wte": nn.Embedding(40, 8), "blocks": nn.ModuleList([nn.ModuleDict(
        {"attn": nn.Linear(8, 8), "mlp": nn.Linear(8, 8)})]), "lm_head": nn.Linear(8, 40, bias=False)})
    model.lm_head.weight = model.wte.weight
    plan = rlrs.Plan(tied=tied)
    report = rlrs.inspect(model, plan, total_steps=100, quiet=True)
    groups = rlrs.param_groups(model, plan, merge=False)
    given = next(g["component"] for g in groups if any(p is model.wte.weight for p in g["params"]))
    row = next(r for r in report.components if r["component"] == "embedding+unembedding (tied)")
    assert row["follows"] == given == (tied or DEFAULT_TIED)  # DEFAULT_TIED read, not assumed
    assert report.follows["wte.weight"] == given
    why = "plan.tied is unset, so rlrs.components.DEFAULT_TIED applies" if tied is None else f"{given} schedule: plan.tied"
    assert f"follows the {given} schedule" in report.text and why in report.text
    # Every tensor follows what param_groups gives it.
    by_tensor = {id(p): g["component"] for g in groups for p in g["params"]}
    assert report.follows == {n: by_tensor[id(p)] for n, p in model.named_parameters(remove_duplicate=False)}
    assert report.follows["lm_head.weight"] == given  # under each of its names


def test_a_tensor_shared_by_other_components_follows_nothing_until_a_rule_settles_it():
    model = nn.ModuleDict({"wte": nn.Embedding(40, 8), "blocks": nn.ModuleList([nn.ModuleDict(
        {"attn": nn.Linear(8, 8), "mlp": nn.Linear(8, 8)})]), "lm_head": nn.Linear(8, 40, bias=False)})
    model.lm_head.weight = model.wte.weight
    model.blocks[0].mlp = model.blocks[0].attn  # one Linear as attention and feed-forward
    rules = [(r"\.mlp\.", "feedforward")]  # names both ways: one tensor, two components
    with pytest.raises(ConfigError, match="one tensor is shared"):
        rlrs.param_groups(model, "paper-dense", rules)
    report = rlrs.inspect(model, "paper-dense", total_steps=100, quiet=True, rules=rules)
    rows = {r["component"]: r["follows"] for r in report.components}
    assert rows["attention+feedforward (tied)"] == "none: give a rule"
    assert rows["embedding+unembedding (tied)"] == DEFAULT_TIED  # still what param_groups would give it
    assert "rlrs.param_groups refuses this model as it is: one tensor is shared" in report.text
    settled = rlrs.inspect(model, "paper-dense", total_steps=100, quiet=True,
                           rules=[(r"^blocks\.0\.(attn|mlp)\.", "attention")])
    assert "refuses" not in settled.text


def test_library_inspect_errors_name_the_argument():
    model = nn.Linear(4, 4)
    for kwargs, words in [
        ({"total_steps": 0}, "total_steps: the training length in steps, a whole number >= 1; got 0 (e.g. total_steps=10_000)"),
        ({"total_steps": 10, "at": "50%,11"}, "at: '11' is not a step in [0, 9]"),
        ({"sets": {"train.steps": 3}}, "sets: only model.* settings"),
        ({"sets": {"model.d_model": 3}}, "sets model.d_model: model.* settings change an rlrs model size"),
        ({"sets": {"plan.tide": "embedding"}}, "sets plan.tide: unknown key; did you mean 'tied'?"),
    ]:
        with pytest.raises(ConfigError) as err:
            rlrs.inspect(model, "paper-dense", quiet=True, **kwargs)
        assert words in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="model: an nn.Module, or a model size"):
        rlrs.inspect(42, "paper-dense")


def test_the_inspection_docstring_runs():
    result = doctest.testmod(rlrs.inspection, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# --- Hugging Face configs and model directories -------------------------------------------------------


def test_inspect_a_model_directory_exits_0(tmp_path, capsys):
    d = _gpt2_dir(tmp_path / "gpt2-tiny")
    assert main(["inspect", str(d), "--plan", "paper-dense", "--steps", "100"]) == 0  # was: table, then exit 2
    captured = capsys.readouterr()
    assert "error" not in captured.err
    assert _row(captured.out, "embedding+unembedding (tied)")[2:4] == ["1", "1,024"]
    assert "plan paper-dense: LR per component (100 steps)" in captured.out
    assert "active_non_embedding" not in captured.out  # the parameter counts are a model size's
    assert main(["inspect", str(d), "--set", "plan.tied=embedding", "--steps", "100"]) == 0
    assert _row(capsys.readouterr().out, "embedding+unembedding (tied)")[-1] == "embedding"


@pytest.mark.parametrize("content,words", [
    ("not json {", ["config.json: invalid JSON", "Hugging Face model config"]),
    ('["a list"]', ["the top level must be a table"]),
    ('{"model_type": "gtp2"}', ["model_type 'gtp2' is unknown to transformers", "did you mean 'gpt2'?"]),
    ('{"model_type": "no-such-architecture-at-all"}', ["is unknown to transformers", "upgrade transformers"]),
    ('{"model_type": "llama", "hidden_size": -5}', ["hidden_size is -5; a size must be a whole number >= 1",
                                                     '"hidden_size": 768']),
    ('{"model_type": "gpt2", "n_embd": 0}', ["n_embd is 0; a size must be a whole number >= 1"]),
    ('{"model_type": "gpt2", "n_embd": 30, "n_head": 4}', ["transformers could not build a gpt2 model"]),
])
def test_inspect_bad_hf_configs_get_clear_errors(tmp_path, capsys, content, words):
    pytest.importorskip("transformers")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(content)
    for spec in (tmp_path / "m", tmp_path / "m" / "config.json"):
        assert main(["inspect", str(spec)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rlrs inspect: error: ") and "Traceback" not in err
        for w in words:
            assert w in err, err


def test_inspect_cli_errors_name_the_flag(capsys, tmp_path):
    cases = [
        (["--steps", "0"], "--steps: the training length in steps, a whole number >= 1; got 0"),
        (["--steps", "-3", "--at", "1"], "--steps: "),
        (["--at", "50%,x"], "--at: 'x' is not a step"),
        (["tiny-dense", "--set", "plan.tide=1"], "--set plan.tide: unknown key; did you mean 'tied'?"),
        (["tiny-dense", "--set", "data.tokenizer=bytes"], "--set: only model.* settings"),
        (["no/such/dir"], "model no/such/dir: no such file or directory"),
        (["tiny-mo"], "did you mean 'tiny-moe'"),
    ]
    for args, words in cases:
        assert main(["inspect", *args]) == 2, args
        captured = capsys.readouterr()
        assert words in captured.err, captured.err
        assert captured.out == "", args  # nothing half-printed before the error
    d = _gpt2_dir(tmp_path / "g")
    assert main(["inspect", str(d), "--set", "model.d_model=8"]) == 2
    assert "model.* settings change an rlrs model size" in capsys.readouterr().err


def test_the_default_plan_is_the_papers_for_what_the_model_is(capsys):
    dense = nn.ModuleDict({"wte": nn.Embedding(40, 8), "blocks": nn.ModuleList([nn.ModuleDict(
        {"attn": nn.Linear(8, 8), "mlp": nn.Linear(8, 8)})]), "lm_head": nn.Linear(8, 40, bias=False)})
    assert "plan paper-dense: LR per component" in rlrs.inspect(dense, total_steps=100, quiet=True).text
    assert main(["inspect", "tiny-moe"]) == 0 and "plan paper-moe: LR per component" in capsys.readouterr().out


def test_a_function_that_parses_arguments_or_exits_is_named_not_run_as_rlrs(tmp_path, capsys):
    script = tmp_path / "train.py"
    script.write_text("import argparse, sys\n"
                      "def main():\n"
                      "    p = argparse.ArgumentParser(); p.add_argument('--iters', type=int); p.parse_args()\n"
                      "    sys.exit(0)\n")
    assert main(["inspect", f"{script}:main"]) == 2
    err = capsys.readouterr().err
    assert "calling main() exited (SystemExit 0)" in err and "def make_model()" in err and "usage:" not in err
