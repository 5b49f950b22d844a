"""The strategy zoo: each strategy's defining behaviour, the tasks, and `rlrs zoo` on the engine."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from rlrs.zoo import strategies as S
from rlrs.config import ConfigError
from rlrs.zoo.dals import DALS, depth_fractions
from rlrs.engine import execute, run_dir
from rlrs.zoo.tasks import TaskRun
from rlrs.zoo.tasks import MLP, TASKS, classifier_rules, digits, gauss_mixture
from rlrs import config
from rlrs.experiments.zoo import listing, load, markdown, render, run_zoo, save

pytest.importorskip("pytorch_optimizer")
RULES = classifier_rules(3)  # the MLP: layers.0 (input), layers.1, layers.2 (head)
# The LR-table helpers step schedulers without training; torch warns about that order.
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")


def lrs(name, total=700, model=None):
    """Each step's LR of every group, for a strategy on a small MLP."""
    model = model or MLP()
    b = S.build(S.get(name), model, total, rules=RULES)
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in b.optimizer.param_groups])
        b.scheduler.step()
    return b, out


def test_the_registry_names_every_strategy_of_the_dals_paper_and_rlrs_llrd():
    expected = {"fixed-sgd", "cosine-sgd", "sgdr", "adam", "adamw", "adabound", "lars", "discriminative", "radam",
                "lion", "lookahead-adamw", "sam", "grokfast", "stlr-discriminative", "sam-discriminative", "dals",
                "dals-fast", "dals-acc", "rlrs", "llrd"}
    assert expected <= set(S.STRATEGIES)
    text = listing()
    for s in S.STRATEGIES.values():
        assert s.name in text and s.paper in text and 1 <= s.generation <= 5
    with pytest.raises(ConfigError, match="did you mean 'dals'"):
        S.get("dalz")


def test_fixed_sgd_is_constant_and_cosine_sgd_decays_to_the_end():
    _, fixed = lrs("fixed-sgd")
    assert all(row == fixed[0] for row in fixed) and fixed[0][0] == 0.05
    _, cos = lrs("cosine-sgd")
    first = [r[0] for r in cos]
    assert first[0] == pytest.approx(0.05) and first[-1] == pytest.approx(0.05 * S.FINAL)
    assert first[349] == pytest.approx(0.05 * (1 + S.FINAL) / 2, rel=1e-2)  # half-way: the cosine's middle
    assert all(a >= b for a, b in zip(first, first[1:]))


def test_sgdr_restarts_at_the_cycle_ends_and_ends_at_the_bottom():
    _, rows = lrs("sgdr", total=701)  # 700 decay steps: cycles of 100, 200, 400
    lr = [r[0] for r in rows]
    for start in (0, 100, 300):
        assert lr[start] == pytest.approx(0.05)  # each cycle starts at η
        assert lr[start + 1] < lr[start]
    assert lr[99] < 0.05 * 0.01 and lr[299] < 0.05 * 0.01  # and ends near the bottom
    assert lr[50] == pytest.approx(0.05 * (1 + S.FINAL) / 2)  # middle of the first cycle
    assert lr[200] == pytest.approx(0.05 * (1 + S.FINAL) / 2)  # middle of the second (twice as long)
    for total in (701, 1150, 94):  # whole cycles, cycles with steps to spare: never a restart at the end
        _, rows = lrs("sgdr", total=total)
        assert rows[-1][0] == pytest.approx(0.05 * S.FINAL)


def test_stlr_is_ulmfit_s_slanted_triangle():
    b, rows = lrs("stlr-discriminative", total=1000)
    top = next(i for i, g in enumerate(b.optimizer.param_groups) if "depth" not in g)  # the top layer's group
    lr = [r[top] for r in rows]
    peak = max(lr)
    assert peak == pytest.approx(1e-3)
    assert lr[0] == pytest.approx(peak / 32)  # starts at η/ratio, not 0
    assert lr.index(peak) == 100  # cut_frac 0.1
    assert lr[-1] == pytest.approx(peak / 32)
    assert lr[50] == pytest.approx(peak * (1 + 0.5 * 31) / 32)  # ULMFiT's formula on the way up


def test_discriminative_rates_divide_by_2_6_per_layer_down():
    model = MLP()
    b = S.build(S.get("discriminative"), model, 100, rules=RULES)
    by_param = {id(p): g["lr"] for g in b.optimizer.param_groups for p in g["params"]}
    lr = {n: by_param[id(p)] for n, p in model.named_parameters()}
    assert lr["layers.2.weight"] == pytest.approx(1e-3)  # the head, the top layer
    assert lr["layers.1.weight"] == pytest.approx(1e-3 / 2.6)
    assert lr["layers.0.weight"] == pytest.approx(1e-3 / 2.6**2)


def _lr_by_param(name, total, steps):
    model = MLP()
    b = S.build(S.get(name), model, total, rules=RULES)
    for _ in range(steps):
        b.scheduler.step()
    by_id = {id(p): g["lr"] for g in b.optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters()}


def test_llrd_and_rlrs_scale_through_the_one_plan():
    lr = _lr_by_param("llrd", 1000, 10)  # step 10: the end of the 1% warmup
    assert lr["layers.2.weight"] == pytest.approx(1e-3)
    assert lr["layers.1.weight"] == pytest.approx(0.8e-3) and lr["layers.0.weight"] == pytest.approx(0.64e-3)
    plan = S.get("rlrs").plan
    lr = _lr_by_param("rlrs", 1000, 10)
    for name, comp in (("layers.0.weight", "embedding"), ("layers.2.weight", "unembedding"), ("layers.1.weight", "feedforward")):
        assert lr[name] == pytest.approx(plan.lr(comp, 10, 1000))
    assert lr["layers.0.weight"] / lr["layers.1.weight"] == pytest.approx(plan.embedding.start / plan.feedforward.start)


def _one_step(name, grads, params, **over):
    """Apply strategy ``name``'s optimizer once to ``params`` with fixed gradients (in float64,
    so that a small step is not lost to float32's rounding near 1)."""
    params, grads = [p.double() for p in params], [g.double() for g in grads]
    s = S.get(name)
    if over:
        s = dataclasses.replace(s, **over)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for i, p in enumerate(params):
        m = torch.nn.Module()
        m.weight = torch.nn.Parameter(p.clone())
        model.layers.append(m)
    b = S.build(s, model, 100, rules=[(r".", "feedforward")])
    b.scheduler.step()  # past the warmup's step 0 (LR 0 for warmed-up strategies)
    before = [m.weight.detach().clone() for m in model.layers]

    def loss_and_backward():
        loss = sum((m.weight * g).sum() for m, g in zip(model.layers, grads))  # gradient exactly g
        loss.backward()
        return loss

    b.step(model, loss_and_backward)
    return [m.weight.detach() - w for m, w in zip(model.layers, before)], b


def test_lars_moves_every_matrix_by_the_same_relative_amount():
    torch.manual_seed(0)
    ws = [torch.randn(8, 8), 5 * torch.randn(8, 8)]
    deltas, b = _one_step("lars", [1e3 * torch.randn(8, 8), 1e-3 * torch.randn(8, 8)], ws)
    lr, tc = b.optimizer.param_groups[0]["lr"], dict(S.get("lars").options)["trust_coefficient"]
    for d, w in zip(deltas, ws):  # whatever the gradient's scale: ‖Δw‖/‖w‖ = lr · trust coefficient
        assert float(d.norm() / w.norm()) == pytest.approx(lr * tc, rel=1e-4)


def test_lion_moves_each_weight_by_exactly_the_lr():
    deltas, b = _one_step("lion", [torch.tensor([[1e-6, -3.0], [5.0, 2.0]])], [torch.ones(2, 2)],
                          plan=S._uniform(1e-3))  # no decay: the sign step alone
    assert torch.allclose(deltas[0].abs(), torch.full((2, 2), 1e-3, dtype=torch.float64), rtol=1e-9)


def test_radam_starts_without_the_adaptive_denominator():
    g = torch.tensor([[1e-3, -3.0], [5.0, 0.5]], dtype=torch.float64)
    deltas, _ = _one_step("radam", [g], [torch.ones(2, 2)])
    assert torch.allclose(deltas[0], -1e-3 * g, rtol=1e-6)  # SGD-like while the variance is unreliable
    adam, _ = _one_step("adam", [g], [torch.ones(2, 2)])
    assert torch.allclose(adam[0].abs(), torch.full((2, 2), 1e-3, dtype=torch.float64), rtol=1e-4)  # Adam: sign-like


def test_adabound_bounds_the_adaptive_step():
    g = torch.full((2, 2), 1e-6)  # Adam would move each weight by lr = 1e-3
    deltas, _ = _one_step("adabound", [g], [torch.ones(2, 2)])
    adam, _ = _one_step("adam", [g], [torch.ones(2, 2)])
    assert float(deltas[0].abs().max()) < 0.1 * float(adam[0].abs().min())


def test_adamw_decays_decoupled_and_adam_does_not():
    zero = [torch.zeros(2, 2)]
    adamw, b = _one_step("adamw", zero, [torch.ones(2, 2)])
    lr = b.optimizer.param_groups[0]["lr"]
    assert torch.allclose(adamw[0], torch.full((2, 2), -lr * S.WD, dtype=torch.float64))
    adam, _ = _one_step("adam", zero, [torch.ones(2, 2)])
    assert torch.count_nonzero(adam[0]) == 0


def test_sam_steps_with_the_gradient_at_the_perturbed_weights():
    # loss = ½‖A w‖²: the gradient depends on w, so SAM's differs from SGD's.
    torch.manual_seed(0)
    A = torch.randn(4, 4)
    w0 = torch.randn(4, 4)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False)])
    model.layers[0].weight.data.copy_(w0)
    b = S.build(S.get("sam"), model, 100, rules=[(r".", "feedforward")])
    lr = b.optimizer.param_groups[0]["lr"]

    def loss_and_backward():
        loss = 0.5 * (A @ model.layers[0].weight).pow(2).sum()
        loss.backward()
        return loss

    b.step(model, loss_and_backward)
    grad = lambda w: A.T @ A @ w  # noqa: E731
    g = grad(w0)
    expected = w0 - lr * grad(w0 + 0.05 * g / g.norm())  # first step: momentum buffer = gradient
    assert torch.allclose(model.layers[0].weight.detach(), expected, atol=1e-6)


def test_lookahead_pulls_back_half_way_to_the_slow_weights_every_5_steps():
    torch.manual_seed(0)
    w0 = torch.randn(3, 3)
    grads = [torch.randn(3, 3) for _ in range(5)]

    def run(name):
        model = torch.nn.Module()
        model.layers = torch.nn.ModuleList([torch.nn.Linear(3, 3, bias=False)])
        model.layers[0].weight.data.copy_(w0)
        b = S.build(S.get(name), model, 100, rules=[(r".", "feedforward")])
        for g in grads:
            b.step(model, lambda g=g: (model.layers[0].weight * g).sum().backward() or torch.tensor(0.0))
        return model.layers[0].weight.detach()

    fast = run("adamw")
    assert torch.allclose(run("lookahead-adamw"), w0 + 0.5 * (fast - w0), atol=1e-6)


def test_grokfast_adds_the_amplified_slow_gradient():
    g = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2, bias=False)])
    b = S.build(S.get("grokfast"), model, 100, rules=[(r".", "feedforward")])
    b.step(model, lambda: (model.layers[0].weight * g).sum().backward() or torch.tensor(0.0))
    # The EMA starts at the first gradient, and the filter adds lamb (2) times it: 3 g.
    assert torch.allclose(model.layers[0].weight.grad, 3 * g)
    b.step(model, lambda: (model.layers[0].weight * -g).sum().backward() or torch.tensor(0.0))
    ema = 0.98 * g + 0.02 * -g
    assert torch.allclose(model.layers[0].weight.grad, -g + 2 * ema, atol=1e-6)


# --- DALS -----------------------------------------------------------------------------------------


def test_dals_phases_follow_the_loss_s_progress():
    opt = DALS([torch.nn.Parameter(torch.ones(1))])
    assert opt.observe(10.0) == 0  # the first loss starts the average
    assert opt.observe(5.0) == 0 and opt.progress == pytest.approx(0.025)  # fast: Δ > 1%
    opt = DALS([torch.nn.Parameter(torch.ones(1))])
    opt.observe(10.0)
    assert opt.observe(9.0) == 1 and opt.progress == pytest.approx(0.005)  # 0.2% < Δ ≤ 1%
    assert opt.observe(opt.loss_avg) == 2  # flat: a plateau
    g0 = {"alpha": 0.6, "fast": False}
    for phase, alpha in ((0, 0.3), (1, 0.6), (2, 0.7)):
        opt.phase = phase
        assert opt.filter_strength(g0) == pytest.approx(alpha)
    opt.phase = 0
    assert opt.filter_strength({"alpha": 0.6, "fast": True}) == 0.0  # DALS-Fast: no filter in phase 0
    opt.phase = 2
    assert opt.filter_strength({"alpha": 0.85, "fast": False}) == 0.9  # clamped


@pytest.mark.parametrize("scale,ratio", [(1e-6, 5.0), (1e6, 0.2), (0.02, None)])
def test_dals_trust_ratio_is_clamped(scale, ratio):
    w = torch.nn.Parameter(torch.full((4,), 2.0, dtype=torch.float64))
    g = torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64) * scale
    opt = DALS([{"params": [w], "lr": 0.1, "depth_fraction": 1.0}])

    def closure():
        opt.zero_grad()
        (w * g).sum().backward()
        return torch.tensor(1.0)

    before = w.detach().clone()
    opt.step(closure)
    r = ratio if ratio is not None else 0.02 * float(before.norm() / g.norm())
    assert torch.allclose(before - w.detach(), 0.1 * r * g, rtol=1e-5)  # first step: ĝ = g, m = ĝ


def test_dals_blends_raw_and_filtered_gradients_by_depth():
    g1, g2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    moves = {}
    for d in (0.0, 1.0):
        w = torch.nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
        opt = DALS([{"params": [w], "lr": 1.0, "depth_fraction": d}], momentum=0.0)
        for g in (g1, g2):
            before = w.detach().clone()

            def closure(g=g):
                opt.zero_grad()
                (w * g).sum().backward()
                return torch.tensor(2.0)  # a flat loss: phase 2 from the second step (α = 0.7)

            opt.step(closure)
        filt = 0.7 * g1 + 0.3 * g2
        blend = (0.3 + 0.4 * d) * g2 + (0.7 - 0.4 * d) * filt
        r = min(5.0, max(0.2, 0.02 * float(before.norm() / blend.norm())))
        moves[d] = before - w.detach()
        assert torch.allclose(moves[d], r * blend, rtol=1e-5)
    # The bottom layer leans on the filtered (slow) gradient, the top on the raw one.
    assert moves[0.0][0] / moves[0.0][1] > moves[1.0][0] / moves[1.0][1]


def test_dals_needs_the_closure_and_valid_settings():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ConfigError, match="closure"):
        DALS([w]).step()
    with pytest.raises(ConfigError, match="momentum"):
        DALS([w], momentum=1.5)
    with pytest.raises(ConfigError, match="depth_fraction"):
        DALS([{"params": [w], "depth_fraction": 2.0}])


def test_dals_state_round_trips():
    w = torch.nn.Parameter(torch.ones(2))
    opt = DALS([w])
    for loss in (5.0, 4.0, 3.9):
        opt.step(lambda loss=loss: (opt.zero_grad(), (w * 1.0).sum().backward(), torch.tensor(loss))[-1])
    other = DALS([w])
    other.load_state_dict(opt.state_dict())
    assert (other.loss_avg, other.phase, other.progress) == (opt.loss_avg, opt.phase, opt.progress)


def test_depth_fractions_run_from_bottom_to_top():
    d = depth_fractions(MLP())
    assert (d["layers.0.weight"], d["layers.1.weight"], d["layers.2.weight"]) == (0.0, 0.5, 1.0)


# --- tasks and the zoo ------------------------------------------------------------------------------


def test_tasks_have_fixed_balanced_splits():
    a, b = gauss_mixture(), gauss_mixture()
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.x_train.shape == (6400, 64) and a.x_test.shape == (1600, 64)
    assert torch.bincount(a.y_train).tolist() == [640] * 10 and torch.bincount(a.y_test).tolist() == [160] * 10
    assert a.x_train[:, 10:].mean(0).abs().max() < 0.1  # the 54 noise dimensions carry no class mean
    pytest.importorskip("sklearn")
    d = digits()
    assert len(d.y_train) + len(d.y_test) == 1797 and d.x_train.shape[1:] == (1, 8, 8)
    frac = torch.bincount(d.y_test) / (torch.bincount(d.y_test) + torch.bincount(d.y_train))
    assert float((frac - 0.2).abs().max()) < 0.01  # stratified


def test_a_task_run_learns_and_a_diverged_one_is_recorded(tmp_path):
    spec = TaskRun("gauss", S.get("adamw"), seed=0, epochs=2)
    r = execute(spec, run_dir(tmp_path, spec))
    assert r.status == "finished" and r.steps == 200 and len(r.eval_steps) == 2
    acc = [json.loads(line)["accuracy"] for line in (r.out / "metrics.jsonl").read_text().splitlines()
           if '"eval"' in line]
    assert acc[-1] > 0.5  # 10 classes: chance is 0.1
    bad = TaskRun("gauss", S.get("fixed-sgd").with_base_lr(1e6), seed=0, epochs=1)
    r = execute(bad, run_dir(tmp_path, bad))
    assert r.status == "diverged" and "step" in r.error
    assert execute(bad, run_dir(tmp_path, bad)).reused  # the same spec diverges again: kept, not rerun
    with pytest.raises(ConfigError, match="did you mean 'gauss'"):
        TaskRun("gaus", S.get("adamw"))


def test_zoo_runs_strategies_x_tasks_x_seeds_and_reuses_them(tmp_path, monkeypatch):
    boom = dataclasses.replace(S.get("fixed-sgd").with_base_lr(1e6), name="boom", title="Boom")
    monkeypatch.setitem(S.STRATEGIES, "boom", boom)
    lines = []
    res = run_zoo(["gauss"], ["adamw", "dals", "boom"], tmp_path, seeds=2, epochs=1, workers=1, log=lines.append)
    assert {(c.strategy, c.status) for c in res.cells} == {("adamw", "finished"), ("dals", "finished"),
                                                           ("boom", "diverged")}
    c = res.cell("adamw", "gauss")
    assert c.finished == 2 and 0.1 < c.accuracy_mean <= 1 and c.loss_mean > 0
    assert c.accuracy_mean == pytest.approx(sum(c.accuracies) / 2) and len(c.accuracies) == 2
    assert len(c.runs) == 2 and {Path(r).parent for r in c.runs} == {tmp_path / "runs"}  # its own runs only
    assert res.cell("boom", "gauss").diverged == 2 and res.cell("boom", "gauss").accuracy_mean is None
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["cells"]) == 3 and doc["seeds"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "| AdamW |" in report and "diverged" in report and "Runs that did not finish" in report
    again = []
    res2 = run_zoo(["gauss"], ["adamw", "dals", "boom"], tmp_path, seeds=2, epochs=1, workers=1, log=again.append)
    assert "6 reused, 0 to run" in again[1]
    assert res2.cell("dals", "gauss").accuracy_mean == res.cell("dals", "gauss").accuracy_mean
    # The result saves, loads and renders the same (run_zoo is run, save and render).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json", "runs", "zoo_curves.png"]
    back = load(tmp_path)
    assert back == res2 and back == load(tmp_path / "results.json")
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(config.to_dict(res2)))
    made = render(back, tmp_path / "again")  # the curves come from the runs the loaded result names
    assert [p.name for p in made] == ["zoo_curves.png", "report.md"]
    assert (tmp_path / "again" / "report.md").read_text() == (tmp_path / "report.md").read_text()
    assert markdown(back) == markdown(res2) and "zoo_curves.png" not in markdown(res2)
    assert load(save(back, tmp_path / "copy")) == res2


def test_the_zoo_s_run_directories_keep_their_names(tmp_path):
    # Run directories are named by the run's identity: the same names as the zoo's runs before.
    names = [run_dir(tmp_path, TaskRun("gauss", S.get("fixed-sgd"), seed, None)).name for seed in range(3)]
    assert names == ["gauss-fixed-sgd-1200fdaf4221", "gauss-fixed-sgd-bcba9156a955", "gauss-fixed-sgd-a073bf6d4640"]


def test_load_says_which_command_writes_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no zoo result here; run `rlrs zoo --out DIR` first"):
        load(tmp_path)


def test_zoo_cli_list_and_errors(capsys):
    from rlrs.cli import main

    assert main(["zoo", "--list"]) == 0
    out = capsys.readouterr().out
    assert "dals-acc" in out and "Foret et al." in out and "gauss" in out
    assert main(["zoo", "--tasks", "gauss"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["zoo", "--tasks", "gauss", "--strategies", "dalz", "--out", "x"]) == 2
    assert "did you mean 'dals'" in capsys.readouterr().err


def test_the_lm_task_is_the_ladder_s_smallest_rung_at_its_horizon():
    from rlrs.zoo.tasks import loss_and_hits
    from rlrs.train import run_config, total_steps

    t = TASKS["lm"]
    split = t.load()
    cfg = run_config("ladder-xs-dense")
    assert t.steps(split) == total_steps(cfg)  # one epoch of windows is the 20-tokens-per-parameter run
    assert split.x_train.shape[1] == cfg.model.seq_len + 1
    torch.manual_seed(0)
    model = t.model()
    loss, hits, n = loss_and_hits(t, model, split.x_test[:2], split.y_test[:2])
    assert n == 2 * cfg.model.seq_len and 0 <= hits <= n
    assert abs(float(loss) - math.log(cfg.model.vocab_size)) < 1.0  # an untrained model: about ln(vocab)
    b = S.build(S.get("rlrs").with_base_lr(1e-2), model, 10, rules=t.rules)
    comps = {g["component"] for g in b.optimizer.param_groups}
    assert {"embedding", "attention", "feedforward"} <= {c for x in comps for c in x.split("+")}


def test_dals_two_steps_with_momentum_and_weight_decay_by_hand():
    w0 = torch.tensor([3.0, 4.0], dtype=torch.float64)
    g1, g2 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    w = torch.nn.Parameter(w0.clone())
    opt = DALS([{"params": [w], "lr": 0.1, "depth_fraction": 0.5}], momentum=0.9, weight_decay=0.01)
    for g, loss in ((g1, 2.0), (g2, 2.0)):  # a flat loss: phase 2 (α = 0.7) at the second step
        opt.step(lambda g=g, loss=loss: (opt.zero_grad(), (w * g).sum().backward(), torch.tensor(loss))[-1])

    def ratio(theta, blend):
        return min(5.0, max(0.2, 0.02 * float(theta.norm() / blend.norm())))

    d = 0.5
    blend1 = g1 + 0.01 * w0  # step 1: the filter starts at g1, so the blend is g1, plus the decay
    r1 = ratio(w0, blend1)
    w1 = w0 - 0.1 * r1 * blend1
    filt = 0.7 * g1 + 0.3 * g2
    blend2 = (0.3 + 0.4 * d) * g2 + (0.7 - 0.4 * d) * filt + 0.01 * w1
    m2 = 0.9 * blend1 + blend2
    w2 = w1 - 0.1 * ratio(w1, blend2) * m2  # this step's trust ratio on the whole momentum
    assert torch.allclose(w.detach(), w2, rtol=1e-10)


@pytest.mark.parametrize("name,momentum,alpha,fast,wd", [("dals", 0.9, 0.6, False, 0.0), ("dals-fast", 0.85, 0.6, True, 0.0),
                                                         ("dals-acc", 0.9, 0.7, False, 5e-4)])
def test_the_registry_s_dals_variants_reach_the_optimizer(name, momentum, alpha, fast, wd):
    b = S.build(S.get(name), MLP(), 100, rules=RULES)
    groups = b.optimizer.param_groups
    assert all(g["momentum"] == momentum and g["alpha"] == alpha and g["fast"] == fast for g in groups)
    assert {g["weight_decay"] for g in groups} == {wd}  # DALS-Acc decays biases too (L2 on every tensor)
    assert sorted({g["depth_fraction"] for g in groups}) == [0.0, 0.5, 1.0]


def test_bad_strategy_options_name_the_option():
    with pytest.raises(ConfigError, match=r"options.momentun is not an option of SGD .*did you mean .momentum."):
        S.build(dataclasses.replace(S.get("fixed-sgd"), options=(("momentun", 0.9),)), MLP(), 10, rules=RULES)
    with pytest.raises(ConfigError, match="grokfast with sam_rho"):
        dataclasses.replace(S.get("sam"), grokfast=(0.98, 2.0))


def test_ranks_put_cells_with_a_lost_seed_after_complete_ones():
    from rlrs.experiments.zoo import Cell, ZooResult, ranks

    def cell(name, acc, finished, diverged=0):
        return Cell(name, "gauss", 3, finished, diverged, 0, acc, None if finished < 2 else 0.01, 0.5, 0.1, 0.9,
                    0, None, None, 1.0)

    res = ZooResult(("gauss",), ("adamw", "sam", "dals"), 3, None, 0.0,
                    (cell("adamw", 0.80, 3), cell("sam", 0.95, 1, diverged=2), cell("dals", 0.85, 3)))
    assert ranks(res, "gauss") == {"dals": 1, "adamw": 2, "sam": 3}  # sam's lone survivor does not win
    text = markdown(res)
    assert "95.0 n=1 (diverged: 1/3 finished)" in text
    with pytest.raises(ConfigError, match="no cell for strategy 'lion'"):
        res.cell("lion", "gauss")


def test_a_run_whose_last_update_breaks_the_weights_is_diverged(tmp_path, monkeypatch):
    from rlrs.zoo import tasks

    real = tasks.evaluate
    calls = []

    def last_eval_breaks(task, model, x, y, batch=256):
        calls.append(1)
        return (float("nan"), 0.1) if len(calls) == 2 else real(task, model, x, y, batch)

    monkeypatch.setattr(tasks, "evaluate", last_eval_breaks)
    with pytest.raises(tasks.Diverged, match="held-out loss nan"):
        tasks.train_task(TASKS["gauss"], S.get("adamw"), 0, tmp_path, epochs=2)


def test_a_task_that_cannot_fetch_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    def offline():
        raise OSError("no network")

    monkeypatch.setitem(TASKS, "digits", dataclasses.replace(TASKS["digits"], fetch=offline))
    res = run_zoo(["gauss", "digits"], ["adamw"], tmp_path, seeds=1, epochs=1, workers=1, log=None)
    assert res.cell("adamw", "gauss").status == "finished"
    bad = res.cell("adamw", "digits")
    assert bad.status == "failed" and bad.failed == 1 and "no network" in bad.errors[0]
    assert "no network" in (tmp_path / "report.md").read_text()


def test_a_task_run_refuses_stop_at(tmp_path):
    spec = TaskRun("gauss", S.get("adamw"), seed=0, epochs=1)
    r = execute(spec, run_dir(tmp_path, spec), stop_at=10)
    assert r.status == "failed" and "stop_at" in r.error


def test_a_fine_tuning_strategy_is_not_applicable_to_a_task_without_an_encoder(tmp_path):
    res = run_zoo(["gauss"], ["adamw", "lora"], tmp_path, seeds=1, epochs=1, workers=1, log=None)
    c = res.cell("lora", "gauss")
    assert c.status == "n/a" and not list((tmp_path / "runs").glob("gauss-lora-*"))
    report = (tmp_path / "report.md").read_text()
    assert "| AdamW |" in report and "| LoRA |" not in report  # left out where it applies to no task
    assert "only gcide-pos" in listing()


def _result(task, accs):
    """A hand-made zoo result on one task: each strategy's final accuracy, 3 seeds."""
    from rlrs.experiments.zoo import Cell, ZooResult

    target = TASKS[task].target
    cells = tuple(Cell(s, task, 3, 3, 0, 0, a, 0.01, 0.3, 0.02, target, 3, 40.0, 2.0, 9.0, runs=(f"/gone/{s}",),
                       accuracies=(a - 0.01, a, a + 0.01)) for s, a in accs.items())
    return ZooResult((task,), tuple(accs), 3, None, 27.0, cells)


def _write(res, out):
    save(res, out)
    render(res, out)


def test_a_results_json_reads_back_into_the_same_result(tmp_path):
    from rlrs.experiments.zoo import load_results

    res = _result("gauss", {"adamw": 0.9, "dals": 0.95})
    _write(res, tmp_path)
    back = load_results(tmp_path / "results.json")  # the earlier name of load
    assert back == res  # every field, the cells included; their run folders need not exist


# What `rlrs zoo` wrote before its result was typed (a cell's derived status included), and the
# report it wrote from it.
OLD_RESULTS = """{"tasks": ["gauss"], "strategies": ["adamw", "sam", "lora"], "seeds": 2, "epochs": 1, "wall_s": 27.5,
 "cells": [
  {"strategy": "adamw", "task": "gauss", "seeds": 2, "finished": 2, "diverged": 0, "failed": 0, "accuracy_mean": 0.9,
   "accuracy_std": 0.01, "loss_mean": 0.3, "loss_std": 0.02, "target": 0.94, "reached": 1, "steps_to_target": 40.0,
   "seconds_to_target": 2.0, "wall_s": 9.0, "errors": [], "applicable": true, "runs": ["/gone/a0", "/gone/a1"],
   "accuracies": [0.89, 0.91], "status": "finished"},
  {"strategy": "sam", "task": "gauss", "seeds": 2, "finished": 1, "diverged": 1, "failed": 0, "accuracy_mean": 0.95,
   "accuracy_std": null, "loss_mean": 0.2, "loss_std": null, "target": 0.94, "reached": 1, "steps_to_target": 30.0,
   "seconds_to_target": 1.5, "wall_s": 8.0, "errors": ["seed 1: diverged at step 7"], "applicable": true,
   "runs": ["/gone/s0"], "accuracies": [0.95], "status": "diverged"},
  {"strategy": "lora", "task": "gauss", "seeds": 2, "finished": 0, "diverged": 0, "failed": 0, "accuracy_mean": null,
   "accuracy_std": null, "loss_mean": null, "loss_std": null, "target": 0.94, "reached": 0, "steps_to_target": null,
   "seconds_to_target": null, "wall_s": 0.0, "errors": [], "applicable": false, "runs": [], "accuracies": [],
   "status": "n/a"}]}
"""
OLD_REPORT = """# rlrs zoo

3 strategies × 1 tasks × 2 seeds; final test accuracy (%, mean ± std over seeds) and rank per task; a cell where a \
seed diverged or failed ranks after the complete ones. The mean rank is over the tasks a strategy applies to (their \
number in brackets). Wall time 28 s.

| strategy | gen | gauss | mean rank |
|---|---|---|---|
| AdamW | 3 | 90.0 ± 1.0 (#1) | 1.0 (1 task) |
| SAM | 5 | 95.0 n=1 (diverged: 1/2 finished) (#2) | 2.0 (1 task) |

## gauss

10-class Gaussian mixture in R^64 (10 informative dims), 6400/1600, MLP 64-128-128-10

| strategy | accuracy % | eval loss | seeds reaching 94% | steps to it | seconds to it |
|---|---|---|---|---|---|
| AdamW | 90.0 ± 1.0 | 0.300 ± 0.020 | 1/2 | 40 | 2.0 |
| SAM | 95.0 n=1 (diverged: 1/2 finished) | 0.200 n=1 | 1/2 | 30 | 1.5 |

## Runs that did not finish

- gauss sam seed 1: diverged at step 7

![accuracy curves](zoo_curves.png)
"""


def test_a_results_json_of_an_earlier_version_loads_and_reports_as_before(tmp_path):
    (tmp_path / "results.json").write_text(OLD_RESULTS)
    res = load(tmp_path)
    assert [c.status for c in res.cells] == ["finished", "diverged", "n/a"] and res.merged_from == ()
    assert res.cell("sam", "gauss").errors == ("seed 1: diverged at step 7",) and res.epochs == 1
    assert markdown(res, Path("zoo_curves.png")) == OLD_REPORT
    assert load(save(res, tmp_path / "new")) == res
    # The benchmark's own files, written by earlier versions: the same report comes out of them.
    for name in ("zoo", "zoo-finetune", "zoo-all"):
        d = Path(__file__).parent.parent / "benchmarks" / "results" / name
        stored = load(d)
        png = None if stored.merged_from else Path("zoo_curves.png")
        assert markdown(stored, png) == (d / "report.md").read_text(), name


def test_merge_puts_tasks_of_separate_zoo_runs_in_one_table(tmp_path):
    from rlrs.cli import main
    from rlrs.experiments.zoo import load_results

    _write(_result("gauss", {"adamw": 0.90, "dals": 0.95}), tmp_path / "a")
    _write(_result("gcide-pos", {"adamw": 0.91, "dals": 0.85, "full-ft": 0.93}), tmp_path / "b")
    a, b = str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json")
    assert main(["zoo", "--merge", a, b, "--out", str(tmp_path / "all")]) == 0
    res = load_results(tmp_path / "all" / "results.json")
    assert res.tasks == ("gauss", "gcide-pos") and res.merged_from == (a, b) and res.wall_s == 54.0
    assert res.cell("full-ft", "gauss").status == "n/a"  # a fine-tuning strategy on a task without an encoder
    assert res.cell("dals", "gauss").accuracy_mean == 0.95 and res.cell("dals", "gcide-pos").accuracy_mean == 0.85
    report = (tmp_path / "all" / "report.md").read_text()
    assert "| DALS | 5 | 95.0 ± 1.0 (#1) | 85.0 ± 1.0 (#3) | 2.0 (2 tasks) |" in report
    assert "| Full fine-tuning | 5 | n/a | 93.0 ± 1.0 (#1) | 1.0 (1 task) |" in report
    assert "Merged from" in report and not (tmp_path / "all" / "zoo_curves.png").exists()


def test_merge_refuses_what_would_mix_or_misreport(tmp_path, capsys):
    from rlrs.cli import main
    from rlrs.experiments.zoo import load_results, merge

    g = _result("gauss", {"adamw": 0.9})
    with pytest.raises(ConfigError, match="task gauss is in both a/results.json and b/results.json"):
        merge({"a/results.json": g, "b/results.json": _result("gauss", {"adamw": 0.8})})
    with pytest.raises(ConfigError, match="b/results.json has 2 seeds"):
        merge({"a/results.json": g, "b/results.json": dataclasses.replace(_result("digits", {"adamw": 0.9}), seeds=2)})
    with pytest.raises(ConfigError, match=r"strategy dals did not run on task gauss in a/results.json; run it there "
                                          r"\(rlrs zoo --tasks gauss --strategies dals --out a\)"):
        merge({"a/results.json": g, "b/results.json": _result("digits", {"adamw": 0.9, "dals": 0.9})})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**config.to_dict(g), "seed": 3}))
    with pytest.raises(ConfigError, match=r"bad.json: not a results.json written by `rlrs zoo`: "
                                          r"zoo_result.seed: unknown key; did you mean 'seeds'"):
        load_results(bad)
    doc = config.to_dict(g)
    doc["cells"][0]["accuracies"] = "0.9"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"bad.json: not a results.json .*: "
                                          r"zoo_result.cells\[0\].accuracies: expected a list"):
        load_results(bad)
    bad.write_text(json.dumps({k: v for k, v in config.to_dict(g).items() if k != "cells"}))
    with pytest.raises(ConfigError, match="bad.json: not a results.json .*: zoo_result: missing cells: "
                                          "it has no default"):
        load_results(bad)
    bad.write_text("{")
    with pytest.raises(ConfigError, match="bad.json: not a results.json written by `rlrs zoo`; invalid JSON"):
        load_results(bad)
    assert main(["zoo", "--merge", str(bad), "--tasks", "gauss", "--out", "x"]) == 2
    assert "no --tasks" in capsys.readouterr().err
