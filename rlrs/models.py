"""Decoder-only Transformers, dense and mixture-of-experts, as in appendix A of the paper.

Pre-norm blocks with RMSNorm, RoPE, causal attention and SwiGLU feed-forwards. MoE layers use
token-choice top-k routing with an expert capacity, the ST-MoE z-loss and the Switch
load-balancing loss. Attention and the router run in float32 even under bf16 autocast.

    >>> import torch
    >>> from rlrs.models import build_model, count_params, get_size
    >>> cfg = get_size("tiny-moe")
    >>> model = build_model(cfg)
    >>> idx = torch.randint(cfg.vocab_size, (2, 16))
    >>> out = model(idx, targets=idx)
    >>> out.logits.shape
    torch.Size([2, 16, 256])
    >>> (out.loss + out.aux_loss).backward()
    >>> sorted(out.stats)
    ['balance_loss', 'dropped_tokens', 'expert_load', 'router_entropy', 'z_loss']
    >>> count_params(get_size("dense-34m"))["active_non_embedding"]  # table 3: 33.6M
    33563136

Parameter names classify themselves by component (``rlrs.components``): ``embed.`` embedding,
``unembed.`` unembedding, ``.attn.`` attention, ``.mlp.`` dense feed-forward, ``.router.`` router,
``.experts.`` experts, and ``*norm*`` other.

One module (about 800 lines) on purpose: the config, the modules, the parameter count and the
model sizes are read together (a size's table-3 count is checked against the modules that build
it), and the module names the classifier reads are defined here alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ADDED, ConfigError, closest

__all__ = [
    "ModelConfig",
    "ModelOutput",
    "Transformer",
    "build_model",
    "count_params",
    "expert_capacity",
    "get_size",
    "SIZES",
    "DEFAULT_SIZE",
    "PAPER_BATCH_SIZE",
    "LADDER",
    "PARAMETRIZATIONS",
    "width_factors",
]

_NORM_EPS = 1e-6


# --- config -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """Shape and training-side constants of a Transformer.

    ``n_experts = 0`` is a dense model; otherwise every block's feed-forward is an MoE layer with
    ``n_experts`` SwiGLU experts of width ``d_ff`` and ``top_k`` active per token.
    ``d_ff = None`` means ``4 * d_model``, which gives the paper's 16·d_model² active
    non-embedding parameters per layer (4d² attention + 12d² SwiGLU). ``capacity_factor = None``
    never drops a token. ``parametrization``: ``"sp"`` or ``"mup"`` relative to ``base_width``
    (see :data:`PARAMETRIZATIONS`). Change fields with ``dataclasses.replace(cfg, vocab_size=...)``.
    """

    vocab_size: int = 50257
    seq_len: int = 512
    d_model: int = 512
    n_layers: int = 8
    n_heads: int = 8
    d_ff: int | None = None
    n_experts: int = 0
    top_k: int = 1
    capacity_factor: float | None = 1.25
    init_scale: float = 0.15
    z_loss_weight: float = 0.001
    balance_loss_weight: float = 0.01
    tie_embeddings: bool = False
    rope_base: float = 10000.0
    parametrization: str = field(default="sp", metadata=ADDED)
    base_width: int | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "d_model", "n_layers", "n_heads"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.d_ff is not None:
            _check_int("d_ff", self.d_ff, minimum=1)
        _check_int("n_experts", self.n_experts, minimum=0)
        _check_int("top_k", self.top_k, minimum=1)
        for name, limit in MAX_SIZE.items():
            v = getattr(self, name)
            if v is not None and v > limit:
                raise ConfigError(f"{name}: {v} is beyond any model this code can build (at most {limit})")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            # RoPE rotates pairs of channels, so head_dim must also be even.
            valid = [h for h in range(1, min(self.d_model, 4 * self.n_heads + 64) + 1)
                     if self.d_model % h == 0 and (self.d_model // h) % 2 == 0]
            hint = min(valid, key=lambda h: abs(h - self.n_heads)) if valid else None
            raise ConfigError(
                f"n_heads: d_model={self.d_model} must split into n_heads={self.n_heads} heads of "
                "even size (head_dim = d_model // n_heads, paired by RoPE); "
                + (f"try n_heads={hint}" if hint else "use an even d_model")
            )
        if self.n_experts and self.top_k > self.n_experts:
            raise ConfigError(
                f"top_k: {self.top_k} exceeds n_experts={self.n_experts}; set top_k <= n_experts"
            )
        if self.capacity_factor is not None:
            _check_float("capacity_factor", self.capacity_factor, positive=True,
                         hint="use a value > 0 (1.25 is usual) or None to never drop tokens")
        _check_float("init_scale", self.init_scale, positive=True, hint="the paper uses 0.15")
        if self.init_scale > MAX_INIT_SCALE:
            # The init std is init_scale / sqrt(fan_in): far above 1 the logits saturate and nothing trains.
            raise ConfigError(f"init_scale: {self.init_scale} is far too large to train (at most {MAX_INIT_SCALE}); "
                              "the paper uses 0.15")
        _check_float("z_loss_weight", self.z_loss_weight, positive=False, hint="0 disables it")
        _check_float("balance_loss_weight", self.balance_loss_weight, positive=False,
                     hint="0 disables it")
        _check_float("rope_base", self.rope_base, positive=True, hint="10000 is usual")
        if not isinstance(self.tie_embeddings, bool):
            raise ConfigError(f"tie_embeddings: must be true or false, got {self.tie_embeddings!r}")
        self._check_parametrization()

    def _check_parametrization(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise ConfigError(f"parametrization: {self.parametrization!r} is unknown; "
                              f"{closest(str(self.parametrization), PARAMETRIZATIONS)}")
        if self.parametrization == "sp":
            if self.base_width is not None:
                raise ConfigError("base_width: only muP uses it; set parametrization = 'mup' or leave base_width unset")
            return
        if self.base_width is None:
            raise ConfigError(f"base_width: muP needs the width its learning rates were tuned at, e.g. "
                              f"model.base_width={self.d_model} (muP equals SP there)")
        _check_int("base_width", self.base_width, minimum=1)
        if self.base_width > self.d_model:
            raise ConfigError(f"base_width: {self.base_width} is larger than d_model={self.d_model}; muP scales up "
                              f"from a smaller base model: use a base_width <= {self.d_model}")
        # muP here keeps n_heads fixed across widths (heads grow with width), as the mup package.
        if self.base_width % self.n_heads or (self.base_width // self.n_heads) % 2:
            raise ConfigError(f"base_width: {self.base_width} does not split into n_heads={self.n_heads} heads of even "
                              f"size (the base model keeps the heads); use a multiple of {2 * self.n_heads}")
        if self.d_ff is not None and self.width_mult != 1.0:
            # A fixed d_ff would leave the down-projection's fan-in behind while its LR takes 1/m.
            raise ConfigError(f"d_ff: muP widens the feed-forward layers with d_model; leave d_ff unset "
                              f"(4 * d_model) instead of {self.d_ff}")

    @property
    def ff_dim(self) -> int:
        """Hidden width of each SwiGLU (dense MLP or one expert)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def width_mult(self) -> float:
        """muP's width multiplier m = d_model / base_width (1 for SP)."""
        return 1.0 if self.parametrization == "sp" else self.d_model / self.base_width

    @property
    def attention_scale(self) -> float | None:
        """The attention logits' scale: ``None`` (SDPA's 1/√d_head) for SP and at muP's base
        width; else muP's 1/d_head, times √(base d_head) so that it meets SP at the base width."""
        if self.width_mult == 1.0:
            return None
        base_head = self.base_width // self.n_heads
        return math.sqrt(base_head) / self.head_dim


PARAMETRIZATIONS = ("sp", "mup")
"""``sp``: standard parametrization. ``mup``: muP for Adam (Tensor Programs V, table 3) relative
to ``base_width``: hidden matrices' LR × 1/m (:func:`width_factors`), output and router logits ×
1/m with their init drawn at the base width's fan-in, embedding init independent of width,
attention scaled by 1/d_head. With m = 1 it is SP."""


def width_factors(config: ModelConfig) -> dict[str, float]:
    """muP's LR multiplier per component for Adam: 1/m for the hidden matrices (attention,
    feed-forward, experts), 1 for the rest (embedding and norms are vector-like; the output head
    and router take 1/m on their logits instead). Empty for SP: every factor is 1.

        >>> import dataclasses
        >>> cfg = dataclasses.replace(get_size("tiny-moe"), d_model=64, parametrization="mup", base_width=32)
        >>> width_factors(cfg)
        {'attention': 0.5, 'feedforward': 0.5, 'experts': 0.5}
    """
    m = config.width_mult
    if m == 1.0:
        return {}
    return {"attention": 1.0 / m, "feedforward": 1.0 / m, "experts": 1.0 / m}


# Upper bounds: far beyond any model this code trains, but small enough that a typo (an extra
# digit run) gets a clear error instead of an out-of-memory crash or a hang.
MAX_SIZE = {"vocab_size": 2**24, "seq_len": 2**20, "d_model": 2**16, "n_layers": 1024, "n_heads": 2**12,
            "d_ff": 2**18, "n_experts": 2**12, "top_k": 2**12}
MAX_INIT_SCALE = 100.0


def _check_int(name: str, value, minimum: int) -> None:
    # bool is an int subclass; `n_layers = true` in a config file is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value, positive: bool, hint: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name}: must be a finite number {bound}, got {value!r}; {hint}")


def expert_capacity(config: ModelConfig, n_tokens: int) -> int:
    """Token-slots each expert can take for a batch of ``n_tokens`` tokens.

    ``ceil(capacity_factor * n_tokens * top_k / n_experts)``, capped at ``n_tokens`` (an expert
    can be chosen at most once per token, so more slots would stay empty); ``n_tokens`` when
    ``capacity_factor`` is None.

        >>> expert_capacity(get_size("tiny-moe"), 64)  # 1.25 * 64 * 1 / 4
        20
    """
    if not config.is_moe:
        raise ConfigError("n_experts: expert_capacity needs an MoE config (n_experts > 0)")
    if config.capacity_factor is None:
        return n_tokens
    cap = math.ceil(config.capacity_factor * n_tokens * config.top_k / config.n_experts)
    return max(1, min(cap, n_tokens))


# --- modules ------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """What ``Transformer.forward`` returns.

    ``loss`` is the mean next-token cross-entropy (None without targets); ``aux_loss`` the router
    losses, already weighted and summed over layers (0 for dense), so training does
    ``(out.loss + out.aux_loss).backward()``. ``stats`` holds detached tensors for logging:
    empty for dense; for MoE ``z_loss``, ``balance_loss`` and ``dropped_tokens`` summed over
    layers, ``expert_load`` [n_experts] and ``router_entropy`` averaged over layers (see ``MoE``).
    """

    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


def _rope_tables(cfg: ModelConfig, t: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Rebuilt each forward (T x head_dim/2, negligible) rather than kept as a buffer, so that
    # casting the model to bf16 cannot round the angles and the state dict stays parameters-only.
    half = cfg.head_dim // 2
    inv_freq = cfg.rope_base ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
    angles = torch.arange(t, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Float32Linear(nn.Linear):
    """A bias-free ``nn.Linear`` computed in float32 whatever the input's or the weight's dtype
    (attention and the router stay in high precision under bf16). A module call, so forward
    hooks see its input like any ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.float(), self.weight.float())


class Attention(nn.Module):
    """Causal multi-head self-attention with RoPE, computed in float32."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.scale = cfg.attention_scale
        self.qkv = Float32Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = Float32Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        b, t, d = x.shape
        # The paper keeps attention in high precision under mixed precision training.
        with torch.autocast(x.device.type, enabled=False):
            h = self.qkv(x)
            q, k, v = h.view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
            q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
            y = self.proj(y.transpose(1, 2).reshape(b, t, d))
        return y.to(x.dtype)


class SwiGLU(nn.Module):
    """Dense feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Experts(nn.Module):
    """``n_experts`` SwiGLUs as batched weights, applied to an [E, capacity, d_model] buffer.

    ``w_gate``, ``w_up``: [E, d_model, d_ff]; ``w_down``: [E, d_ff, d_model] (input dim first,
    so ``x @ w`` per expert).
    """

    def __init__(self, n_experts: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w_up = nn.Parameter(torch.empty(n_experts, d_model, d_ff))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_ff, d_model))
        # Never uninitialized memory (an MoE built on its own would compute with garbage, NaN at
        # times); drawn from a forked generator, so the draws of the model's own initialization,
        # which sets these again, are the same as without it.
        with torch.random.fork_rng(devices=[]):
            for w in (self.w_gate, self.w_up, self.w_down):
                nn.init.normal_(w, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        h = F.silu(torch.bmm(x, self.w_gate)) * torch.bmm(x, self.w_up)
        return torch.bmm(h, self.w_down)


class MoE(nn.Module):
    """Token-choice top-k mixture of SwiGLU experts with a per-expert capacity.

    Each token picks its ``top_k`` experts by router softmax probability; its output is the
    probability-weighted sum of their outputs (probabilities renormalised over the chosen k when
    k > 1). Slots are filled first-choice-first, then in batch order (row-major over [B, T]);
    slots beyond an expert's capacity (``expert_capacity``) are dropped: their contribution is 0,
    the residual stream carries the token, and ``dropped_tokens`` counts them. So, as in Switch
    and GShard, whether a token is dropped depends on the earlier tokens of its own sequence and
    on every token of earlier sequences in the batch; each sequence stays causal.
    Dispatch and combine are gathers with fixed shapes: no host sync and no Python loop.

    Stats (detached): ``z_loss`` and ``balance_loss`` (weighted, their sum is the aux loss),
    ``expert_load`` (fraction of token-slots routed to each expert, before drops),
    ``dropped_tokens`` (slots dropped), ``router_entropy`` (mean entropy of the router softmax).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router = Float32Linear(cfg.d_model, cfg.n_experts)
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.ff_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        e, k = cfg.n_experts, cfg.top_k
        shape = x.shape
        xf = x.reshape(-1, shape[-1])
        n = xf.shape[0]
        cap = expert_capacity(cfg, n)

        # The paper computes the router in high precision: softmax and z-loss are sensitive.
        with torch.autocast(x.device.type, enabled=False):
            logits = self.router(xf)  # [n, e]
            if cfg.width_mult != 1.0:
                logits = logits / cfg.width_mult  # muP: the router reads out of the width
            log_probs = logits.log_softmax(dim=-1)
            probs = log_probs.exp()
            weight, choice = probs.topk(k, dim=-1)  # [n, k]
            if k > 1:
                weight = weight / weight.sum(dim=-1, keepdim=True)
            z_loss = cfg.z_loss_weight * logits.logsumexp(dim=-1).square().mean()
            top1_frac = torch.bincount(choice[:, 0], minlength=e).float() / n
            balance_loss = cfg.balance_loss_weight * e * (top1_frac * probs.mean(dim=0)).sum()

        # Slot order is choice-major (every token's 1st choice, then every 2nd choice), so a
        # full expert drops later choices before any first choice.
        flat_expert = choice.t().reshape(-1)  # [k*n]
        flat_token = torch.arange(n, device=x.device).repeat(k)
        onehot = F.one_hot(flat_expert, e)
        position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # rank within its expert
        kept = position < cap
        # Buffer row of each slot; a dropped slot gets its own row past the E*cap buffer, so the
        # scatter below never writes one index twice (deterministic on every backend).
        spill = e * cap + torch.arange(k * n, device=x.device)
        slot = torch.where(kept, flat_expert * cap + position, spill)

        # Token feeding each buffer row; empty rows read an all-zero pad token (index n).
        source = torch.full((e * cap + k * n,), n, dtype=torch.long, device=x.device)
        source.scatter_(0, slot, flat_token)
        x_pad = torch.cat((xf, xf.new_zeros(1, xf.shape[1])))
        buffer = x_pad[source[: e * cap]].view(e, cap, -1)

        y = self.experts(buffer).reshape(e * cap, -1)
        y_pad = torch.cat((y, y.new_zeros(1, y.shape[1])))
        per_slot = y_pad[slot.clamp(max=e * cap)].view(k, n, -1)  # dropped slots read zeros
        out = (per_slot * weight.t().unsqueeze(-1).to(per_slot.dtype)).sum(dim=0)

        with torch.no_grad():
            stats = {
                "z_loss": z_loss.detach(),
                "balance_loss": balance_loss.detach(),
                "expert_load": onehot.sum(dim=0).float() / (k * n),
                "dropped_tokens": (~kept).sum(),
                "router_entropy": -(probs * log_probs).sum(dim=-1).mean(),
            }
        return out.to(x.dtype).view(shape), {"aux_loss": z_loss + balance_loss, **stats}


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + ff(norm(x))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=_NORM_EPS)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=_NORM_EPS)
        self.is_moe = cfg.is_moe
        if cfg.is_moe:
            self.moe = MoE(cfg)
        else:
            self.mlp = SwiGLU(cfg.d_model, cfg.ff_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        h = self.mlp_norm(x)
        if self.is_moe:
            y, aux = self.moe(h)
            return x + y, aux
        return x + self.mlp(h), {}


class Transformer(nn.Module):
    """Decoder-only language model; see the module docstring for usage.

    Init (Switch Transformer's reduced-scale init, as the paper): every matrix is drawn from a
    normal with ``std = sqrt(init_scale / fan_in)`` truncated at ±2·std (``trunc_normal_``; the
    truncation leaves an empirical std of about 0.88·std). ``fan_in`` is the input dimension of
    the matrix: ``d_model`` for embed, unembed, qkv, proj, gate, up, router, ``w_gate``,
    ``w_up``; ``d_ff`` for down and ``w_down``. Norm weights start at 1.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.RMSNorm(config.d_model, eps=_NORM_EPS)
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-draw all weights with the init described in the class docstring."""
        scale = self.config.init_scale
        mup = self.config.parametrization == "mup"
        # Layers that read out of the width (the output head, the routers): under muP drawn at the
        # base width's fan-in, so that with their 1/m logit multiplier the effective weight's
        # variance goes like 1/fan_in² (Tensor Programs V, table 3; the mup package's MuReadout).
        readouts = {id(self.unembed)} | {id(m.router) for m in self.modules() if isinstance(m, MoE)}
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                # muP: an input layer's init does not shrink with width (the base model's).
                fan_in = self.config.base_width if mup else module.embedding_dim
                _trunc_normal(module.weight, fan_in=fan_in, scale=scale)
            elif isinstance(module, nn.Linear):
                if module.weight is not self.embed.weight:  # tied: drawn once, as embed
                    fan_in = self.config.base_width if mup and id(module) in readouts else module.in_features
                    _trunc_normal(module.weight, fan_in=fan_in, scale=scale)
            elif isinstance(module, Experts):
                for w in (module.w_gate, module.w_up, module.w_down):
                    _trunc_normal(w, fan_in=w.shape[1], scale=scale)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """Logits for ``idx`` [B, T] (T <= seq_len) and, given ``targets`` [B, T], the mean
        cross-entropy (``-100`` targets are ignored)."""
        if idx.dim() != 2:
            raise ValueError(f"idx: expected shape [batch, time], got {tuple(idx.shape)}")
        t = idx.shape[1]
        if t > self.config.seq_len:
            raise ValueError(
                f"idx: sequence length {t} exceeds seq_len={self.config.seq_len}; "
                "crop the input or build the model with a larger seq_len"
            )
        cos, sin = _rope_tables(self.config, t, idx.device)
        x = self.embed(idx)
        layer_aux = []
        for block in self.blocks:
            x, aux = block(x, cos, sin)
            layer_aux.append(aux)
        logits = self.unembed(self.norm(x))
        if self.config.width_mult != 1.0:
            logits = logits / self.config.width_mult  # muP's output multiplier
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        aux_loss, stats = _combine_aux(layer_aux, idx.device)
        return ModelOutput(logits=logits, loss=loss, aux_loss=aux_loss, stats=stats)


def _trunc_normal(w: Tensor, fan_in: int, scale: float) -> None:
    std = math.sqrt(scale / fan_in)
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _combine_aux(
    layers: list[dict[str, Tensor]], device: torch.device
) -> tuple[Tensor, dict[str, Tensor]]:
    layers = [a for a in layers if a]
    if not layers:
        return torch.zeros((), device=device), {}

    def total(key: str) -> Tensor:
        return torch.stack([a[key] for a in layers]).sum(dim=0)

    def mean(key: str) -> Tensor:
        return torch.stack([a[key] for a in layers]).mean(dim=0)

    stats = {
        "z_loss": total("z_loss"),
        "balance_loss": total("balance_loss"),
        "expert_load": mean("expert_load"),
        "dropped_tokens": total("dropped_tokens"),
        "router_entropy": mean("router_entropy"),
    }
    return total("aux_loss"), stats


def build_model(config: ModelConfig) -> Transformer:
    """A freshly initialised ``Transformer`` (seed with ``torch.manual_seed`` first)."""
    return Transformer(config)


# --- parameter counting -------------------------------------------------------------------------


def count_params(model_or_config: Transformer | ModelConfig) -> dict[str, int]:
    """Parameter counts: ``total``, ``active`` (only ``top_k`` of the experts), and both without
    the embedding and unembedding matrices (``*_non_embedding``; norms and router count).

    A ``ModelConfig`` is counted analytically (no allocation, so ``moe-906m`` is free); a
    ``Transformer`` by its actual parameters, shared (tied) tensors once.

        >>> c = count_params(get_size("moe-34m"))  # table 3: 33.6M active, 210M total
        >>> c["active_non_embedding"], c["total_non_embedding"]
        (33595904, 209756672)
    """
    if isinstance(model_or_config, ModelConfig):
        return _count_config(model_or_config)
    if isinstance(model_or_config, Transformer):
        return _count_model(model_or_config)
    raise TypeError(
        f"count_params takes a Transformer or a ModelConfig, got {type(model_or_config).__name__}"
    )


def _counts(cfg: ModelConfig, total: int, embedding: int, experts: int) -> dict[str, int]:
    inactive = experts * (cfg.n_experts - cfg.top_k) // cfg.n_experts if cfg.is_moe else 0
    return {
        "total": total,
        "active": total - inactive,
        "total_non_embedding": total - embedding,
        "active_non_embedding": total - embedding - inactive,
    }


def _count_config(cfg: ModelConfig) -> dict[str, int]:
    d, ff = cfg.d_model, cfg.ff_dim
    embedding = cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    experts = cfg.n_layers * cfg.n_experts * 3 * d * ff
    per_layer = 2 * d + 4 * d * d  # two norms, qkv + proj
    per_layer += d * cfg.n_experts if cfg.is_moe else 3 * d * ff  # router, or the dense MLP
    total = embedding + experts + cfg.n_layers * per_layer + d  # + final norm
    return _counts(cfg, total, embedding, experts)


def _count_model(model: Transformer) -> dict[str, int]:
    total = embedding = experts = 0
    for name, p in model.named_parameters():  # yields a shared tensor once
        total += p.numel()
        if name.startswith(("embed.", "unembed.")):
            embedding += p.numel()
        elif ".experts." in name:
            experts += p.numel()
    return _counts(model.config, total, embedding, experts)


# --- model sizes (rlrs's reference models; named plans live in rlrs.presets) ------------------------


def tiny_dense() -> ModelConfig:
    """For tests: a forward and backward take milliseconds."""
    return ModelConfig(vocab_size=256, seq_len=32, d_model=32, n_layers=2, n_heads=2)


def tiny_moe() -> ModelConfig:
    """``tiny-dense`` with 4 experts, top-1."""
    return dataclasses.replace(tiny_dense(), n_experts=4)


def micro_dense() -> ModelConfig:
    """For CPU demos: learns visibly within minutes on 2 cores (1.05M non-embedding params).

    ``vocab_size`` stands in for a small trained tokenizer; the data pipeline replaces it with the
    tokenizer's size. Keep that vocabulary small: at batch 16 × 128 the unembedding and softmax
    cost about as much as the 4 blocks already at 4096 tokens, and ~5× more at GPT-2's 50257.
    """
    return ModelConfig(vocab_size=4096, seq_len=128, d_model=128, n_layers=4, n_heads=4)


def micro_moe() -> ModelConfig:
    """``micro-dense`` with 8 experts, top-1."""
    return dataclasses.replace(micro_dense(), n_experts=8)


def small_dense() -> ModelConfig:
    """``micro-dense`` at twice the width (4.2M non-embedding params, 4× micro): the CPU-sized
    target for ``rlrs transfer`` from a plan tuned on ``micro-dense``. Head size stays 32."""
    return dataclasses.replace(micro_dense(), d_model=256, n_heads=8)


def small_moe() -> ModelConfig:
    """``small-dense`` with 8 experts, top-1: the transfer target for ``micro-moe``."""
    return dataclasses.replace(small_dense(), n_experts=8)


def _ladder(d_model: int, n_layers: int, n_experts: int = 0) -> ModelConfig:
    return ModelConfig(vocab_size=1024, seq_len=128, d_model=d_model, n_layers=n_layers,
                       n_heads=d_model // 16, n_experts=n_experts)


def ladder_xs_dense() -> ModelConfig:
    """The compute-optimal ladder's smallest rung (32.9k active non-embedding params): d_model 32,
    2 layers, heads of 16, seq_len 128, a 1024-id BPE. At the default 20 tokens per parameter a
    run is 322 steps of 16 × 128 tokens, about a minute on one core: the rung ``tune`` searches.

    Why these shapes: the rungs grow width and depth together (d_model/layers 32/2, 48/3, 64/5,
    heads of 16) so that the ladder spans 10× in active non-embedding parameters while its top rung
    still trains to 20 tokens per parameter in about 10 minutes on one core. The 1024-id vocabulary keeps each
    embedding matrix at 1.0× the non-embedding part on this rung and 0.2× on the top one: the
    paper's 34M models sit at 0.75× with GPT-2's 50k ids, whereas a 4096-id vocabulary would make
    the embeddings 4× the whole model here. ``seq_len`` 128 keeps attention's share of compute
    near the paper's (seq_len / d_model ≈ 2 to 4, the paper's 512 / 512 = 1 at 34M).
    """
    return _ladder(32, 2)


def ladder_xs_moe() -> ModelConfig:
    """``ladder-xs-dense`` with 8 experts, top-1 (same active parameters)."""
    return _ladder(32, 2, n_experts=8)


def ladder_s_dense() -> ModelConfig:
    """The ladder's middle rung: d_model 48, 3 layers (110.9k active non-embedding params, 3.4×
    ``ladder-xs``); 1084 steps at 20 tokens per parameter."""
    return _ladder(48, 3)


def ladder_s_moe() -> ModelConfig:
    """``ladder-s-dense`` with 8 experts, top-1."""
    return _ladder(48, 3, n_experts=8)


def ladder_m_dense() -> ModelConfig:
    """The ladder's top CPU rung: d_model 64, 5 layers (328.4k active non-embedding params, 10×
    ``ladder-xs``); 3207 steps at 20 tokens per parameter, about 10 minutes on one core."""
    return _ladder(64, 5)


def ladder_m_moe() -> ModelConfig:
    """``ladder-m-dense`` with 8 experts, top-1."""
    return _ladder(64, 5, n_experts=8)


def ladder_l_dense() -> ModelConfig:
    """The ladder's first GPU rung: d_model 128, 8 layers (2.1M active non-embedding params, 64×
    ``ladder-xs``); 20 tokens per parameter is 42M tokens, an hour on one CPU core, under a minute
    on one GPU (``benchmarks/gpu_ladder.sh``)."""
    return _ladder(128, 8)


def ladder_l_moe() -> ModelConfig:
    """``ladder-l-dense`` with 8 experts, top-1."""
    return _ladder(128, 8, n_experts=8)


LADDER: dict[str, tuple[str, ...]] = {
    "dense": ("ladder-xs-dense", "ladder-s-dense", "ladder-m-dense", "ladder-l-dense"),
    "moe": ("ladder-xs-moe", "ladder-s-moe", "ladder-m-moe", "ladder-l-moe"),
}
"""The compute-optimal ladder's rungs per model type, smallest first (see ``ladder_xs_dense``):
``xs``, ``s`` and ``m`` train on a CPU, ``l`` is for a GPU."""


def _paper(d_model: int, n_layers: int, seq_len: int, n_experts: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=50257,  # GPT-2 tokenizer
        seq_len=seq_len,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // 64,
        n_experts=n_experts,
        top_k=1,
    )


def dense_34m() -> ModelConfig:
    """Table 3, Dense 34M: d_model 512, 8 layers, seq_len 512."""
    return _paper(512, 8, 512, 0)


def moe_34m() -> ModelConfig:
    """Table 3, MoE 8×34M: d_model 512, 8 layers, 8 experts top-1, seq_len 512."""
    return _paper(512, 8, 512, 8)


def dense_113m() -> ModelConfig:
    """Table 3, Dense 113M: d_model 768, 12 layers, seq_len 512."""
    return _paper(768, 12, 512, 0)


def moe_113m() -> ModelConfig:
    """Table 3, MoE 8×113M: d_model 768, 12 layers, 8 experts top-1, seq_len 512."""
    return _paper(768, 12, 512, 8)


def dense_906m() -> ModelConfig:
    """Table 3, Dense 906M: d_model 1536, 24 layers, seq_len 1024."""
    return _paper(1536, 24, 1024, 0)


def moe_906m() -> ModelConfig:
    """Table 3, MoE 8×906M: d_model 1536, 24 layers, 8 experts top-1, seq_len 1024."""
    return _paper(1536, 24, 1024, 8)


SIZES: dict[str, Callable[[], ModelConfig]] = {
    "tiny-dense": tiny_dense,
    "tiny-moe": tiny_moe,
    "micro-dense": micro_dense,
    "micro-moe": micro_moe,
    "small-dense": small_dense,
    "small-moe": small_moe,
    "ladder-xs-dense": ladder_xs_dense,
    "ladder-xs-moe": ladder_xs_moe,
    "ladder-s-dense": ladder_s_dense,
    "ladder-s-moe": ladder_s_moe,
    "ladder-m-dense": ladder_m_dense,
    "ladder-m-moe": ladder_m_moe,
    "ladder-l-dense": ladder_l_dense,
    "ladder-l-moe": ladder_l_moe,
    "dense-34m": dense_34m,
    "moe-34m": moe_34m,
    "dense-113m": dense_113m,
    "moe-113m": moe_113m,
    "dense-906m": dense_906m,
    "moe-906m": moe_906m,
}

# What every command trains when no --model is given: the MoE model that fits a laptop CPU.
DEFAULT_SIZE = "micro-moe"

# Table 3's batch sizes (sequences per step); a training setting, kept apart from ModelConfig.
PAPER_BATCH_SIZE: dict[str, int] = {
    "dense-34m": 256,
    "moe-34m": 256,
    "dense-113m": 256,
    "moe-113m": 256,
    "dense-906m": 384,
    "moe-906m": 384,
}


def get_size(name: str) -> ModelConfig:
    """The ``ModelConfig`` of the model size ``name``; an unknown name raises naming the closest one.

        >>> get_size("moe-34m").n_experts
        8
    """
    try:
        return SIZES[name]()
    except KeyError:
        raise ConfigError(f"model size {name!r} is unknown; {closest(name, SIZES)}") from None


# The names before model sizes and plans were named apart ("preset" meant both); kept for one
# release so that existing imports keep working. New code uses SIZES, DEFAULT_SIZE and get_size.
PRESETS = SIZES
DEFAULT_PRESET = DEFAULT_SIZE
get_preset = get_size
