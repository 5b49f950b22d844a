"""Components from structure, tested on every model class transformers can build tiny offline:
its own auto mappings for causal LM, masked LM and seq2seq LM, and vision Transformers.

Each class is built from its default config with 2 layers, on the ``meta`` device (no memory, no
download). A class that cannot be built that way, or whose parameters structure cannot place, is
listed with the reason (``scripts/families.py`` writes the same table to ``docs/families.md``);
nothing is skipped silently.
"""

import pytest

pytest.importorskip("transformers")

from rlrs.families import KINDS, NEEDS_RULES, Outcome, survey  # noqa: E402

@pytest.fixture(scope="module", params=list(KINDS))
def outcomes(request) -> list[Outcome]:
    return survey(request.param)


def test_every_buildable_class_is_classified_or_listed_with_its_reason(outcomes):
    built = [o for o in outcomes if o.built]
    assert len(built) >= 0.8 * len(outcomes), [(o.model_type, o.reason) for o in outcomes if not o.built]
    for o in outcomes:
        if not o.built:
            assert o.reason, f"{o.model_type}: not built, and no reason given"
    failed = {o.model_type: o.reason for o in built if not o.classified and o.model_type not in NEEDS_RULES}
    assert not failed, failed
    placed_now = [o.model_type for o in built if o.classified and o.model_type in NEEDS_RULES]
    assert not placed_now, f"classified now: take them off NEEDS_RULES: {placed_now}"
    print(f"\n{outcomes[0].kind}: {sum(o.classified for o in outcomes)} classified, "
          f"{sum(o.built and not o.classified for o in outcomes)} need rules, {sum(not o.built for o in outcomes)} not built")


def test_every_classified_class_meets_the_invariants(outcomes):
    for o in outcomes:
        if not o.classified:
            continue
        problems = o.problems()
        assert not problems, f"{o.model_type} ({o.class_name}): {problems}"


def test_every_moe_class_has_a_router_and_experts(outcomes):
    moe = [o for o in outcomes if o.classified and o.moe]
    for o in moe:
        assert {"router", "experts"} <= o.components, f"{o.model_type}: {sorted(o.components)}"


def _three_lines(model, batch, steps=3):
    """The README's three lines, unchanged, around a few steps of plain training."""
    import torch

    import rlrs

    plan = rlrs.presets.get("paper-moe")
    opt = torch.optim.AdamW(rlrs.param_groups(model, plan))
    sched = rlrs.RelativeLR(opt, plan, steps)
    for step in range(steps):
        for g in opt.param_groups:
            assert g["lr"] == plan.lr(g["components"][0], step, steps)
        loss = batch(model)
        loss.backward(); opt.step(); opt.zero_grad()  # noqa: E702 - as the README writes it
        sched.step()
    return {c for g in opt.param_groups for c in g["components"]}


def test_the_three_lines_run_unchanged_on_a_tied_nanogpt_and_hf_qwen3_and_qwen3_moe():
    import importlib.util
    from pathlib import Path

    import torch
    import transformers

    torch.manual_seed(0)
    spec = importlib.util.spec_from_file_location("nanogpt", Path(__file__).parents[1] / "examples" / "nanogpt.py")
    nanogpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nanogpt)
    gpt = nanogpt.GPT(vocab=64, d=32, layers=2, heads=2, seq_len=16)
    gpt.lm_head.weight = gpt.transformer.wte.weight  # nanoGPT's own weight tying
    idx = torch.randint(0, 64, (2, 16))
    assert _three_lines(gpt, lambda m: m(idx, idx)) == {"unembedding", "attention", "feedforward", "other",
                                                         "embedding"}  # wpe: embedding; tied wte: unembedding
    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16)
    qwen3 = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**small))
    assert {"embedding", "unembedding", "attention", "feedforward"} <= _three_lines(
        qwen3, lambda m: m(input_ids=idx, labels=idx).loss)
    moe = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(**small, num_experts=4, num_experts_per_tok=2,
                                                                       moe_intermediate_size=32))
    assert {"router", "experts"} <= _three_lines(moe, lambda m: m(input_ids=idx, labels=idx).loss)
