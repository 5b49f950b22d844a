"""muP for the reference models: identity at the base width, width factors
through Plan.lr, init and multipliers that follow Tensor Programs V's table 3 for Adam."""

import dataclasses
import math

import pytest
import torch

from rlrs import param_groups, presets
from rlrs.config import ConfigError
from rlrs.models import ModelConfig, build_model, get_size, width_factors
from rlrs.optim import RelativeLR


def cfg_at(width: int, parametrization: str = "mup", base: int | None = 32, moe: bool = True) -> ModelConfig:
    c = get_size("tiny-moe" if moe else "tiny-dense")  # d_model 32, 2 heads
    return dataclasses.replace(c, d_model=width, parametrization=parametrization,
                               base_width=base if parametrization == "mup" else None)


def test_mup_at_its_base_width_is_sp_bit_for_bit():
    sp, mup = cfg_at(32, "sp"), cfg_at(32, "mup", base=32)
    torch.manual_seed(0)
    a = build_model(sp)
    torch.manual_seed(0)
    b = build_model(mup)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    x = torch.randint(0, sp.vocab_size, (2, 16))
    oa, ob = a(x, x), b(x, x)
    assert torch.equal(oa.logits, ob.logits) and torch.equal(oa.aux_loss, ob.aux_loss)
    assert width_factors(mup) == {} and mup.width_mult == 1.0 and mup.attention_scale is None
    plan = presets.get("paper-moe")
    ga = param_groups(a, plan, width_factors=width_factors(sp))
    gb = param_groups(b, plan, width_factors=width_factors(mup))
    assert [(g["component"], g.get("width_factor")) for g in ga] == [(g["component"], g.get("width_factor")) for g in gb]


def test_width_factors_reach_every_lr_through_plan_lr():
    cfg = cfg_at(64, base=32)  # m = 2
    assert cfg.width_mult == 2.0
    assert width_factors(cfg) == {"attention": 0.5, "feedforward": 0.5, "experts": 0.5}
    model = build_model(cfg)
    plan = presets.get("paper-moe")
    groups = param_groups(model, plan, width_factors=width_factors(cfg))
    opt = torch.optim.AdamW(groups, lr=plan.base_lr)
    sched = RelativeLR(opt, plan, total_steps=100)
    for _ in range(30):
        opt.step()
        sched.step()
    for g in opt.param_groups:
        comp = g["components"][0]
        want = plan.lr(comp, 30, 100) * (0.5 if comp in ("attention", "experts") else 1.0)
        assert g["lr"] == pytest.approx(want, rel=1e-12), comp
    lrs = sched.lrs_by_component()
    assert lrs["experts"] == pytest.approx(plan.lr("experts", 30, 100) / 2) and lrs["router"] == plan.lr("router", 30, 100)


def test_independent_decay_ignores_the_width_factor_and_coupled_decay_follows_it():
    cfg = cfg_at(64, base=32)
    plan = dataclasses.replace(presets.get("paper-moe"), independent_wd=True, weight_decay=1e-4)
    groups = param_groups(build_model(cfg), plan, width_factors=width_factors(cfg))
    opt = torch.optim.AdamW(groups, lr=plan.base_lr)
    sched = RelativeLR(opt, plan, total_steps=100)
    sched.step()
    for g in opt.param_groups:
        if g["decay"]:  # the shrink per step, lr × wd, is the plan's, whatever the width factor
            comp = g["components"][0]
            assert g["lr"] * g["weight_decay"] == pytest.approx(plan.weight_decay_of(comp) * plan.decay_shape(comp, 1, 100))


def test_mup_multipliers_and_init_follow_the_width():
    torch.manual_seed(0)
    stds = {}
    for w in (32, 64, 128):
        for par in ("sp", "mup"):
            m = build_model(cfg_at(w, par))
            stds[(w, par)] = m.embed.weight.std().item()
    # muP: the input layer's init does not shrink with width; SP's shrinks like 1/sqrt(width).
    assert stds[(128, "mup")] == pytest.approx(stds[(32, "mup")], rel=0.05)
    assert stds[(128, "sp")] == pytest.approx(stds[(32, "sp")] / 2, rel=0.05)
    # Readouts (head, router): drawn at the base width's fan-in under muP, so with the 1/m logit
    # multiplier their effective weights' variance falls like 1/fan_in² (SP's: 1/fan_in).
    for par, want in (("mup", 1.0), ("sp", 0.5)):
        a, b = build_model(cfg_at(32, par)), build_model(cfg_at(128, par))
        for name in ("unembed", "router"):  # every layer's router together: enough weights for a std
            wa, wb = [torch.cat([p.flatten() for n, p in m.named_parameters() if n.split(".")[-2] == name])
                      for m in (a, b)]
            assert wb.std().item() == pytest.approx(want * wa.std().item(), rel=0.15), (par, name)
    # Attention: 1/d_head with heads fixed (2), meeting SP's 1/sqrt(d_head) at the base width.
    cfg = cfg_at(128)
    assert cfg.head_dim == 64 and cfg.attention_scale == pytest.approx(math.sqrt(16) / 64)
    # Output logits: the same weights give 1/m the logits of SP at m = 4 (attention and router
    # also change, so compare with everything but the output multiplier equal: a dense model
    # whose attention sees one token).
    sp, mup = cfg_at(128, "sp", moe=False), cfg_at(128, "mup", moe=False)
    torch.manual_seed(1)
    a = build_model(sp)
    b = build_model(mup)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, sp.vocab_size, (3, 1))  # one position: attention's softmax is 1 whatever its scale
    assert torch.allclose(b(x).logits, a(x).logits / 4, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"parametrization": "mpu"}, "parametrization: 'mpu' is unknown; did you mean 'mup'"),
    ({"parametrization": "mup"}, "base_width: muP needs the width"),
    ({"parametrization": "mup", "base_width": 64}, "base_width: 64 is larger than d_model=32"),
    ({"parametrization": "mup", "base_width": 6}, "base_width: 6 does not split into n_heads=2 heads of even size"),
    ({"base_width": 16}, "base_width: only muP uses it"),
    ({"parametrization": "mup", "base_width": 16, "d_ff": 64}, "d_ff: muP widens the feed-forward layers"),
])
def test_bad_parametrization_names_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(get_size("tiny-dense"), **kwargs)


def test_width_factors_are_checked():
    with pytest.raises(ConfigError, match="width_factors: 'atention' is not a component; did you mean 'attention'"):
        param_groups(build_model(get_size("tiny-dense")), "paper-dense", width_factors={"atention": 0.5})
    with pytest.raises(ConfigError, match="width_factors: attention's factor must be a number > 0"):
        param_groups(build_model(get_size("tiny-dense")), "paper-dense", width_factors={"attention": 0.0})


def test_coordinate_check_slopes_are_flat_under_mup_and_grow_under_sp():
    from rlrs.experiments.coord_check import run

    kw = dict(base_width=32, base_lr=1e-2, steps=3, seeds=2)
    sp = run("tiny-dense", [32, 64, 128, 256], parametrization="sp", **kw)
    mup = run("tiny-dense", [32, 64, 128, 256], parametrization="mup", **kw)
    for layer in ("embedding", "attention", "feedforward"):
        assert abs(mup.slope(layer, 3)) < 0.3, (layer, mup.slopes())
    # SP with one η for every width: the hidden layers' updates grow with width after a few steps.
    assert sp.slope("attention", 3) > 0.8 and sp.slope("feedforward", 3) > 0.8, sp.slopes()
    assert sp.slope("embedding", 0) < -0.3  # SP's embedding init shrinks like 1/sqrt(width); muP's does not
    # Logits: at init muP's readout (base-width init, × 1/m) makes them shrink like 1/sqrt(m), and
    # training brings the slope up toward 0; SP's logits grow with width once training starts.
    assert mup.slope("logits", 0) == pytest.approx(-0.5, abs=0.1) and mup.slope("logits", 3) > mup.slope("logits", 0) + 0.1
    assert sp.slope("logits", 3) > mup.slope("logits", 3) + 0.5


def test_coord_check_command_writes_its_results(tmp_path, capsys):
    from rlrs.cli import main
    from rlrs.experiments.coord_check import load, markdown, slope_text

    assert main(["coord-check", "--widths", "32,64", "--steps", "1", "--seeds", "1", "--parametrization", "mup",
                 "--base-width", "32", "--out", str(tmp_path)]) == 0
    res = load(tmp_path)
    assert res.widths == (32, 64) and set(res.slopes()) == {"embedding", "attention", "feedforward", "logits"}
    assert res.command == ("rlrs coord-check --model tiny-dense --steps 1 --widths 32,64 --parametrization mup "
                           f"--plan uniform --base-width 32 --seeds 1 --out {tmp_path}")
    text = capsys.readouterr().out
    assert (tmp_path / "coord_check.png").stat().st_size > 0 and slope_text(res) in text
    assert f"results: {tmp_path / 'coord_check.json'}  figure: {tmp_path / 'coord_check.png'}" in text
    assert (tmp_path / "coord_check.md").read_text() == markdown(res)
    assert main(["coord-check", "--parametrization", "mup", "--out", str(tmp_path)]) == 2
    assert "--base-width" in capsys.readouterr().err


def test_coord_check_run_writes_nothing_and_save_load_render_round_trip(tmp_path, monkeypatch):
    from rlrs.experiments.coord_check import coord_check, load, markdown, render, run, save

    monkeypatch.chdir(tmp_path)
    res = run("tiny-dense", [64, 32], parametrization="mup", base_width=32, steps=1, seeds=1)
    assert list(tmp_path.iterdir()) == []  # run only measures
    assert res.widths == (32, 64) and res.command.startswith("rlrs.experiments.coord_check.coord_check(")
    path = save(res, tmp_path / "cc")
    assert path == tmp_path / "cc" / "coord_check.json"
    back = load(path)
    assert back == res and load(tmp_path / "cc") == res and back.slopes() == res.slopes()
    png, md = render(back, tmp_path / "cc")
    assert (png.name, md.name) == ("coord_check.png", "coord_check.md")
    assert md.read_text() == markdown(res)
    assert "| logits | " in md.read_text() and f"{res.slope('logits', 1):+.2f}" in md.read_text()
    # The one call: the same measurement, saved and rendered into out.
    again = coord_check("tiny-dense", [32, 64], parametrization="mup", base_width=32, steps=1, seeds=1,
                        out=tmp_path / "one")
    assert again == res and load(tmp_path / "one") == res
    assert (tmp_path / "one" / "coord_check.md").read_text() == markdown(res)


# Written by rlrs coord-check before the result had the experiment shape (--widths 32,64 --steps 1
# --seeds 1 --parametrization mup --base-width 32); it held the slopes too, derived from rms.
OLD_COORD_CHECK_JSON = """{
 "preset": "tiny-dense",
 "parametrization": "mup",
 "base_width": 32,
 "widths": [
  32,
  64
 ],
 "steps": 1,
 "seeds": 1,
 "base_lr": 0.003,
 "rms": {
  "embedding": [
   [
    0.06089065596461296,
    0.0609620027244091
   ],
   [
    0.06042205169796944,
    0.06044359132647514
   ]
  ],
  "attention": [
   [
    0.060602471232414246,
    0.06560004688799381
   ],
   [
    0.05456915870308876,
    0.05897051654756069
   ]
  ],
  "feedforward": [
   [
    0.020933846943080425,
    0.021588643081486225
   ],
   [
    0.020431209355592728,
    0.021144707687199116
   ]
  ],
  "logits": [
   [
    0.340339332818985,
    0.3404458165168762
   ],
   [
    0.23841075599193573,
    0.23758073151111603
   ]
  ]
 },
 "slopes": {
  "embedding": [
   -0.011145681720568614,
   -0.012320916585816404
  ],
  "attention": [
   -0.15129082301352131,
   -0.1537030146300158
  ],
  "feedforward": [
   -0.03506285320243076,
   -0.02997595187758809
  ],
  "logits": [
   -0.5135245673621378,
   -0.5190073709858779
  ]
 }
}
"""


def test_a_coord_check_of_an_earlier_version_loads(tmp_path):
    import json

    from rlrs.config import ConfigError
    from rlrs.experiments.coord_check import load, markdown

    (tmp_path / "coord_check.json").write_text(OLD_COORD_CHECK_JSON)
    res = load(tmp_path)
    assert (res.preset, res.parametrization, res.base_width, res.widths, res.steps) == ("tiny-dense", "mup", 32,
                                                                                          (32, 64), 1)
    assert res.command == ""
    old = json.loads(OLD_COORD_CHECK_JSON)
    for layer, slopes in old["slopes"].items():  # the derived slopes are the ones it stored
        assert res.slopes()[layer] == pytest.approx(slopes, abs=1e-12)
    assert "base width 32" in markdown(res)
    with pytest.raises(FileNotFoundError, match=r"no coordinate check here; run `rlrs coord-check --out DIR`"):
        load(tmp_path / "none")
    (tmp_path / "coord_check.json").write_text('{"preset": "tiny-dense", "width": [32]}')
    with pytest.raises(ConfigError, match=r"coord_check.json: not a coord_check.json written by `rlrs coord-check`: "
                                          r"coord_check.width: unknown key; did you mean 'widths'"):
        load(tmp_path)


def test_the_warmup_replacement_on_top_of_mup_is_refused():
    from rlrs.train import run_config

    sets = {"model.d_model": 64, "model.parametrization": "mup", "model.base_width": 32}
    with pytest.raises(ConfigError, match="plan.width_warmup: 'decay-away' replaces muP, which this model already uses"):
        run_config("tiny-dense", "uniform-dense", sets={**sets, "plan.width_warmup": "decay-away"})
    run_config("tiny-dense", "uniform-dense", sets=sets)  # each alone is fine
    run_config("tiny-dense", "uniform-dense", sets={"model.d_model": 64, "plan.width_warmup": "decay-away"})
    # At its base width muP is SP, so the factor is not applied twice there.
    run_config("tiny-dense", "uniform-dense", sets={**sets, "model.d_model": 32, "plan.width_warmup": "decay-away"})
