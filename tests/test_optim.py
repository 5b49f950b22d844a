"""param_groups and RelativeLR: partition, identities, closed form, resume, tensor LR, decay."""

import io
import warnings

import pytest
import torch
from torch import nn

from rlrs import presets
from rlrs.components import COMPONENTS
from rlrs.config import ConfigError
from rlrs.factors import DepthDecay
from rlrs.optim import DEFAULT_TIED, RelativeLR, assign_components, muon_split, param_groups
from rlrs.plan import ComponentPlan, Plan

from conftest import ToyLM


def constant_uniform(**kw) -> Plan:
    return Plan(warmup=0.0, **{c: ComponentPlan(shape="constant") for c in COMPONENTS}, **kw)


def batches(n, vocab=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (4, 6), generator=g) for _ in range(n)]


def train(model, opt, sched=None, steps=15):
    for x in batches(steps):
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return loss.item()


def twins():
    torch.manual_seed(0)
    a = ToyLM()
    b = ToyLM()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("foreach", [False, True])
def test_uniform_constant_plan_is_bit_identical_to_adamw(foreach):
    a, b = twins()
    plan = constant_uniform(base_lr=3e-3, weight_decay=0.1, decay_1d=True)
    groups = param_groups(a, plan)
    assert len(groups) == 1  # everything merges into one group
    opt_a = torch.optim.AdamW(groups, foreach=foreach)
    sched = RelativeLR(opt_a, plan, total_steps=15)
    opt_b = torch.optim.AdamW(b.parameters(), lr=3e-3, weight_decay=0.1, foreach=foreach)
    loss_a, loss_b = train(a, opt_a, sched), train(b, opt_b)
    assert loss_a == loss_b
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n


def test_default_no_decay_groups_match_adamw_with_two_groups():
    a, b = twins()
    plan = constant_uniform(base_lr=1e-3, weight_decay=0.1)
    groups = param_groups(a, plan)
    assert [g["decay"] for g in groups] == [True, False]
    opt_a = torch.optim.AdamW(groups)
    sched = RelativeLR(opt_a, plan, total_steps=15)
    decay = [p for p in b.parameters() if p.ndim >= 2]
    no_decay = [p for p in b.parameters() if p.ndim < 2]
    opt_b = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, weight_decay=0.1)
    train(a, opt_a, sched), train(b, opt_b)
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))


def test_every_parameter_in_exactly_one_group(toy):
    toy.blocks[0].mlp.up.weight.requires_grad_(False)  # frozen: in no group
    plan = presets.get("paper-moe")
    groups = param_groups(toy, plan, merge=False)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in toy.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(set(ids)) == len(ids)
    tags = {(g["component"], g["decay"]) for g in groups}
    assert ("router", True) in tags and ("experts", True) in tags and ("other", False) in tags
    assert ("attention", False) in tags  # the qkv bias: attention, not decayed
    for g in groups:
        assert g["components"] == (g["component"],)
        assert g["weight_decay"] == (0.1 if g["decay"] else 0.0)


def test_merge_joins_identical_components_only(toy):
    plan = presets.get("paper-moe")  # attention, feedforward, other are all 1 -> 1
    merged = param_groups(toy, plan)
    names = [g["component"] for g in merged]
    # decayed: the attention and feed-forward matrices; not decayed: the qkv bias and the norms
    assert "attention+feedforward" in names and "attention+other" in names
    assert "router" in names and "experts" in names and "embedding" in names
    assert len(merged) < len(param_groups(toy, plan, merge=False))


def test_tied_weights_follow_the_embedding_unless_the_plan_says_otherwise():
    # The default is what won on two tied GPTs (BENCHMARKS.md: "Tied weights").
    model = ToyLM(tie=True)
    comp = assign_components(model, presets.get("paper-moe"))  # the plan leaves tied unset
    assert comp["embed.weight"] == DEFAULT_TIED == "embedding" and "unembed.weight" not in comp
    for choice in ("embedding", "unembedding"):
        plan = Plan(tied=choice)
        comp = assign_components(model, plan)
        assert comp["embed.weight"] == choice and "unembed.weight" not in comp
        groups = param_groups(model, plan, merge=False)
        assert sum(p is model.embed.weight for g in groups for p in g["params"]) == 1


def test_a_tensor_shared_by_other_components_gets_a_fix_that_runs_as_written():
    model = ToyLM()
    model.blocks[0].mlp.up.weight = model.blocks[0].attn.qkv.weight  # attention and feed-forward share one
    with pytest.raises(ConfigError, match="it can follow only one schedule") as info:
        param_groups(model, presets.get("paper-moe"))
    fix = str(info.value).split("e.g. ", 1)[1]
    assert fix == 'rlrs.param_groups(model, plan, rules=[(r"^blocks\\.0\\.mlp\\.up\\.weight$", "attention")])'
    rlrs = __import__("rlrs")
    groups = eval(fix, {"rlrs": rlrs, "model": model, "plan": presets.get("paper-moe")})  # noqa: S307 - the message's own code
    assert sum(p is model.blocks[0].attn.qkv.weight for g in groups for p in g["params"]) == 1


def test_scheduler_follows_the_closed_form(toy):
    plan = presets.get("paper-moe")
    T = 200
    opt = torch.optim.AdamW(param_groups(toy, plan, merge=False))
    sched = RelativeLR(opt, plan, T)
    for step in range(T):
        for g in opt.param_groups:
            assert abs(g["lr"] - plan.lr(g["component"], step, T)) < 1e-15
        assert sched.lrs_by_component()["router"] == plan.lr("router", step, T)
        opt.step()
        sched.step()
    # the last step's LR is η·λ_base·λ_end
    assert abs(plan.lr("experts", T - 1, T) - 3e-3 * 0.04 * 1.125) < 1e-15


def test_state_dict_round_trip_through_weights_only_load(toy):
    plan = presets.get("paper-moe")
    opt = torch.optim.AdamW(param_groups(toy, plan))
    sched = RelativeLR(opt, plan, 100)
    for _ in range(37):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    # a scheduler built with another length refuses the state, and adopts it when asked to;
    # then it continues exactly like the original
    other = ToyLM()
    opt2 = torch.optim.AdamW(param_groups(other, plan))
    sched2 = RelativeLR(opt2, presets.get("paper-moe"), 5000)
    opt2.load_state_dict(state["opt"])
    with pytest.raises(ConfigError, match="total_steps 100"):
        sched2.load_state_dict(state["sched"])
    sched2.load_state_dict(state["sched"], adopt=True)
    assert sched2.total_steps == 100 and sched2.plan == plan and sched2.last_epoch == 37
    for _ in range(20):
        assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
        opt.step(); sched.step(); opt2.step(); sched2.step()


def test_tensor_lr_fused_adamw_and_no_warnings(toy):
    plan = presets.get("paper-moe")
    groups = param_groups(toy, plan, tensor_lr=True)
    opt = torch.optim.AdamW(groups, fused=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right call order emits no warning at all
        sched = RelativeLR(opt, plan, 50)
        lr_tensors = [g["lr"] for g in opt.param_groups]
        train(toy, opt, sched, steps=5)
    for g, t in zip(opt.param_groups, lr_tensors):
        assert g["lr"] is t  # updated in place, never replaced
        assert abs(g["lr"].item() - plan.lr(g["components"][0], 5, 50)) < 1e-12
    state = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    opt2 = torch.optim.AdamW(param_groups(ToyLM(), plan, tensor_lr=True), fused=True)
    sched2 = RelativeLR(opt2, plan, 50)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert all(isinstance(g["lr"], torch.Tensor) for g in opt2.param_groups)
    assert [g["lr"].item() for g in opt2.param_groups] == [g["lr"].item() for g in opt.param_groups]


def test_independent_weight_decay_shrinks_by_wd_times_shape():
    torch.manual_seed(0)
    model = ToyLM().double()
    plan = Plan(base_lr=1e-2, independent_wd=True, weight_decay=1e-3, warmup=0.1,
                router=ComponentPlan(0.5, 2.0, weight_decay=5e-3))
    T = 40
    opt = torch.optim.AdamW(param_groups(model, plan, merge=False))
    sched = RelativeLR(opt, plan, T)
    w = model.blocks[0].moe.router.weight
    for step in range(T):
        before = w.detach().clone()
        opt.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # Adam's update is 0: only the decay moves weights
        opt.step()
        expected = 1 - 5e-3 * plan.decay_shape("router", step, T)
        assert torch.allclose(w.detach(), before * expected, rtol=0, atol=1e-15), step
        sched.step()
    assert plan.decay_shape("router", 0, T) == 0.0 and plan.decay_shape("router", 4, T) == 1.0
    assert abs(plan.decay_shape("router", T - 1, T) - 0.1) < 1e-12  # λ_base at the end


def test_independent_weight_decay_needs_decoupled_decay(toy):
    plan = Plan(independent_wd=True, weight_decay=1e-4)
    with pytest.raises(ConfigError, match="needs an optimizer with decoupled weight decay"):
        RelativeLR(torch.optim.SGD(param_groups(toy, plan)), plan, 10)
    RelativeLR(torch.optim.Adam(param_groups(toy, plan), decoupled_weight_decay=True), plan, 10)


def test_groups_without_components_are_rejected(toy):
    opt = torch.optim.AdamW(toy.parameters())
    with pytest.raises(ConfigError, match=r"param_groups\[0\] has no 'components'.*rlrs.param_groups"):
        RelativeLR(opt, Plan(), 10)


def test_impossible_schedule_fails_at_construction(toy):
    plan = Plan(warmup=0.9)
    with pytest.raises(ConfigError, match="warmup"):
        RelativeLR(torch.optim.AdamW(param_groups(toy, plan)), plan, 5)


def test_any_optimizer_accepts_the_groups(toy):
    plan = presets.get("paper-moe")
    for make in (lambda g: torch.optim.SGD(g, momentum=0.9), torch.optim.Adam, torch.optim.RMSprop, torch.optim.Adagrad):
        opt = make(param_groups(toy, plan))
        sched = RelativeLR(opt, plan, 30)
        train(toy, opt, sched, steps=3)


def test_optimizers_that_would_ignore_the_schedule_are_refused(toy):
    groups = param_groups(toy, presets.get("paper-moe"))

    class AdamWScheduleFree(torch.optim.AdamW):  # the schedulefree package's class name
        pass

    with pytest.raises(ConfigError, match="schedule-free"):
        RelativeLR(AdamWScheduleFree(groups), "paper-moe", 10)
    adafactor_like = torch.optim.SGD([{**g, "relative_step": True} for g in param_groups(toy, "paper-moe")], lr=0.1)
    with pytest.raises(ConfigError, match=r"relative_step=True sets its own step size .*relative_step=False"):
        RelativeLR(adafactor_like, "paper-moe", 10)
    foreach = torch.optim.AdamW(param_groups(toy, "paper-moe", tensor_lr=True), foreach=True)
    with pytest.raises(ConfigError, match="foreach path with a tensor LR .*fused=True"):
        RelativeLR(foreach, "paper-moe", 10)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no Muon")
def test_muon_for_matrices_and_adamw_for_the_rest_follow_one_plan(toy):
    plan = presets.get("paper-moe")
    muon, adamw = muon_split(param_groups(toy, plan, merge=False))
    assert all(p.ndim == 2 for g in muon for p in g["params"]) and {c for g in muon for c in g["components"]} <= {
        "attention", "feedforward"}
    split = [p for g in muon + adamw for p in g["params"]]
    assert len(split) == len({id(p) for p in split}) == len([p for p in toy.parameters() if p.requires_grad])
    opts = [torch.optim.Muon(muon, adjust_lr_fn="match_rms_adamw"), torch.optim.AdamW(adamw)]
    scheds = [RelativeLR(o, plan, 50) for o in opts]
    before = toy.blocks[0].attn.qkv.weight.detach().clone()
    for step in range(3):
        for o in opts:
            for g in o.param_groups:
                assert g["lr"] == plan.lr(g["components"][0], step, 50)
        toy(torch.randint(0, 32, (2, 5))).logsumexp(-1).mean().backward()
        for o in opts:
            o.step()
            o.zero_grad()
        for s in scheds:
            s.step()
    assert not torch.equal(before, toy.blocks[0].attn.qkv.weight)  # Muon moved the attention matrix


def test_muon_split_refuses_a_group_that_merges_hidden_matrices_with_the_rest(toy):
    # A uniform plan merges every component into one group: silently handing it all to AdamW
    # would train no tensor with Muon.
    with pytest.raises(ValueError, match=r"merge=False"):
        muon_split(param_groups(toy, "uniform-moe"))
    muon, adamw = muon_split(param_groups(toy, "uniform-moe", merge=False))
    assert muon and {c for g in muon for c in g["components"]} <= {"attention", "feedforward"}


# --- depth as a plan dimension (LLRD) -------------------------------------------------------------


def test_depth_decay_scales_each_layer_through_plan_lr():
    from rlrs.models import build_model, get_size
    from rlrs.optim import RelativeLR, param_groups

    model = build_model(get_size("tiny-dense"))  # 2 layers
    plain = presets.get("paper-dense")
    assert all("depth" not in g for g in param_groups(model, plain))  # unset: groups as before
    plan = plain.with_factor(DepthDecay(0.5))
    groups = param_groups(model, plan)
    opt = torch.optim.AdamW(groups, lr=plan.base_lr)
    sched = RelativeLR(opt, plan, total_steps=100)
    for _ in range(20):
        opt.step()
        sched.step()
    seen = {}
    for g in opt.param_groups:
        comp, depth = g["components"][0], g.get("depth", 0)
        assert g["lr"] == pytest.approx(plain.lr(comp, 20, 100) * 0.5**depth, rel=1e-12)
        seen[(comp, depth)] = g
    # The embedding sits below both layers, the head above them; each layer's attention has its own group.
    assert ("embedding", 2) in seen and ("unembedding", 0) in seen
    assert {("attention", 0), ("attention", 1), ("feedforward", 0), ("feedforward", 1)} <= set(seen)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_depth_decay_needs_numbered_layers_and_a_positive_factor():
    from rlrs.optim import param_groups

    flat = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10))
    with pytest.raises(ConfigError, match="depth_decay: Sequential has no numbered layers"):
        param_groups(flat, presets.get("paper-dense").with_factor(DepthDecay(0.8)),
                     rules=[(r"^0\.", "embedding"), (r"^1\.", "unembedding")])
    with pytest.raises(ConfigError, match="depth_decay: the LR factor per layer from the top, a number > 0"):
        DepthDecay(0.0)
    with pytest.raises(ConfigError, match="plan.depth_decay: the LR factor per layer from the top"):
        Plan.from_dict({**presets.get("paper-dense").to_dict(), "depth_decay": 0.0})


# --- the plan reaches the optimizer --------------------------------------------------------------


def _scheduled(toy, steps=40, **kw):
    plan = presets.get("paper-dense")
    opt = torch.optim.AdamW(param_groups(toy, plan))
    return plan, opt, RelativeLR(opt, plan, steps, **kw)


def test_a_scripts_own_lr_loop_fails_at_the_next_step_naming_the_group(toy):
    _, opt, sched = _scheduled(toy)
    for step in range(3):
        opt.step()
        sched.step()
    for g in opt.param_groups:  # nanoGPT's loop: one LR for every group, written before opt.step()
        g["lr"] = 6e-4
    opt.step()
    with pytest.raises(ConfigError, match=r"param_groups\[0\] \(embedding\): its lr is 0.0006, but RelativeLR set "
                                          r".* at step 3.*script's own LR code"):
        sched.step()


def test_a_changed_weight_decay_is_noticed_too(toy):
    _, opt, sched = _scheduled(toy)
    opt.param_groups[-1]["weight_decay"] = 0.5
    with pytest.raises(ConfigError, match=r"its weight_decay is 0.5.*set it in the plan"):
        sched.step()


def test_allow_overrides_lets_code_rescale_after_each_step(toy):
    plan, opt, sched = _scheduled(toy, allow_overrides=True)
    for step in range(5):
        opt.step()
        sched.step()
        for g in opt.param_groups:
            g["lr"] *= 0.5  # deliberate: half of the plan, every step
    # RelativeLR still sets its closed form at each step; the rescale happens after it.
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * plan.lr("embedding", 5, 40))


def test_chained_and_sequential_schedulers_are_refused_not_silently_dropped(toy):
    # ChainedScheduler multiplies factors; RelativeLR sets each LR in closed form, so ConstantLR's
    # factor would be lost at every step: the next RelativeLR step says so instead.
    _, opt, sched = _scheduled(toy)
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [sched, torch.optim.lr_scheduler.ConstantLR(opt, factor=0.5, total_iters=2)])
    with pytest.raises(ConfigError, match=r"another scheduler on this optimizer \(ChainedScheduler, SequentialLR"):
        for _ in range(5):
            opt.step()
            chained.step()
    plan = presets.get("paper-dense")
    opt = torch.optim.AdamW(param_groups(toy, plan))
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    rel = RelativeLR(opt, plan, 40)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, rel], milestones=[3])
    with pytest.raises(ConfigError, match="RelativeLR set"):
        for _ in range(6):
            opt.step()
            seq.step()


def test_resume_does_not_trip_the_check(toy):
    _, opt, sched = _scheduled(toy)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    _, opt2, sched2 = _scheduled(toy)
    sched2.load_state_dict(state)
    for _ in range(3):
        opt2.step()
        sched2.step()
    assert sched2.last_epoch == 7


def test_a_tied_run_that_trains_the_default_is_named_by_it_and_others_keep_their_names():
    from rlrs.engine import PresetRun
    from rlrs.train import run_config

    tied = PresetRun(run_config("tiny-dense", "paper-dense", sets={"model.tie_embeddings": True})).identity()
    assert tied["tied_default"] == DEFAULT_TIED  # not the name a run of the old default had
    chosen = PresetRun(run_config("tiny-dense", "paper-dense", sets={"model.tie_embeddings": True,
                                                                     "plan.tied": "unembedding"})).identity()
    untied = PresetRun(run_config("tiny-dense", "paper-dense")).identity()
    uniform = PresetRun(run_config("tiny-dense", "uniform-dense", sets={"model.tie_embeddings": True})).identity()
    assert "tied_default" not in chosen and "tied_default" not in untied and "tied_default" not in uniform
