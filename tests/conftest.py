import pytest
import torch
from torch import nn


class ToyLM(nn.Module):
    """A tiny language model named the rlrs way: every component is present once."""

    def __init__(self, vocab=32, d=8, experts=2, tie=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        block = nn.Module()
        block.attn_norm = nn.LayerNorm(d)
        block.attn = nn.Module()
        block.attn.qkv = nn.Linear(d, d)
        block.mlp_norm = nn.LayerNorm(d)
        block.mlp = nn.Module()
        block.mlp.up = nn.Linear(d, d, bias=False)
        block.moe = nn.Module()
        block.moe.router = nn.Linear(d, experts, bias=False)
        block.moe.experts = nn.Module()
        block.moe.experts.w = nn.Parameter(torch.randn(experts, d, d) * 0.1)
        self.blocks = nn.ModuleList([block])
        self.norm = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)
        if tie:
            self.unembed.weight = self.embed.weight

    def forward(self, idx):
        b = self.blocks[0]
        x = self.embed(idx)
        x = x + b.attn.qkv(b.attn_norm(x))
        h = b.mlp_norm(x)
        gate = torch.softmax(b.moe.router(h), -1)
        x = x + b.mlp.up(h) + torch.einsum("bte,edf,btd->btf", gate, b.moe.experts.w, h)
        return self.unembed(self.norm(x))


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyLM()


def _sentences(n, seed=0):
    import random

    rng = random.Random(seed)
    subjects = ["the king", "a fool", "my lord", "the queen", "this night", "our love", "the sea"]
    verbs = ["speaks of", "dreams of", "fears", "loves", "remembers", "forgets", "calls"]
    objects = ["the crown", "a storm", "his brother", "sweet music", "the moon", "old wars", "her ring"]
    return "\n".join(
        f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(n)
    )


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A small learnable corpus (10 documents of templated sentences) and its own cache dir."""
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"doc{i}.txt").write_text(_sentences(400, seed=i))
    return root


@pytest.fixture
def tiny_sets(corpus_dir):
    """--set overrides that point a tiny preset at the test corpus."""
    return {
        "data.corpus": str(corpus_dir / "docs"),
        "data.cache_dir": str(corpus_dir / "cache"),
        "data.val_fraction": 0.2,
        "train.threads": 1,
    }
