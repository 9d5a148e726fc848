"""Parameter counts and training FLOPs, the one formula behind MFU and scaling fits.

Symbols (a `ModelConfig`): D d_model, L n_layers, H heads, K kv heads, Dh head dim,
F MLP hidden size, V vocab size, T sequence length.

Per token, forward pass, matmuls only (2 FLOPs per multiply-add), per layer:
    q/k/v projections   2 · D · (H + 2K) · Dh
    output projection   2 · H · Dh · D
    SwiGLU MLP          2 · 3 · D · F
    attention           2 · 2 · H · Dh · T / 2        (QKᵀ and AV; causal: half of T)
plus the logit layer    2 · D · V   (the embedding lookup is no matmul).
Training = 3 × forward (backward costs two forwards). This is the count MaxText
uses (`calculate_tflops_training_per_device`), so MFU figures compare directly;
for d_model 256, 4 layers, 4 heads of 64, MLP 1024, vocab 32000, T 512, batch 8 it
gives 0.3173 TFLOP per step.

As a breakdown of the familiar "6N": the q/k/v, output and MLP terms are exactly
6 · N_matmul, where N_matmul = L · (D(H+2K)Dh + H·Dh·D + 3·D·F) is the number of
non-embedding weights that take part in matmuls (norm gains do not); attention adds
6 · L · H · Dh · T (per token, growing with T) and the logit layer 6 · D · V.
Training compute of a run is C = flops_per_token · D_tokens; the scaling fits use
this C (not 6·N·D) for the runs of this package. Counts:
    param_count(embeddings=False)  = L·(D(H+2K)Dh + H·Dh·D + 3DF + 2D [+ 2Dh with qk_norm]) + D
    param_count(embeddings=True)   = the above + V·D (tied) or 2·V·D (untied)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs per token by part (forward × 3)."""

    qkv: float
    out_proj: float
    mlp: float
    attention: float
    logits: float

    @property
    def total(self) -> float:
        return self.qkv + self.out_proj + self.mlp + self.attention + self.logits

    @property
    def dense(self) -> float:
        """Everything but the sequence-length-dependent attention term."""
        return self.total - self.attention

    @property
    def six_n(self) -> float:
        """The 6·N_matmul part: q/k/v, output projection and MLP."""
        return self.qkv + self.out_proj + self.mlp

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "six_n": self.six_n, "dense": self.dense, "total": self.total}


def _dims(model):
    return (
        model.d_model, model.n_heads, model.n_kv_heads, model.resolved_head_dim, model.d_ff, model.vocab_size, model.n_layers,
    )


def flops_breakdown(model, seq_len: int) -> FlopsBreakdown:
    """Training FLOPs per token for a `ModelConfig` at sequence length `seq_len`."""
    d, h, k, dh, f, v, n = _dims(model)
    train = 3.0
    return FlopsBreakdown(
        qkv=train * n * 2 * d * (h + 2 * k) * dh,
        out_proj=train * n * 2 * h * dh * d,
        mlp=train * n * 2 * 3 * d * f,
        attention=train * n * 2 * 2 * h * dh * seq_len / 2,
        logits=train * 2 * d * v,
    )


def training_flops_per_token(model, seq_len: int) -> float:
    return flops_breakdown(model, seq_len).total


def training_flops_per_step(model, seq_len: int, batch_size: int) -> float:
    return training_flops_per_token(model, seq_len) * seq_len * batch_size


def training_flops(model, seq_len: int, tokens: float) -> float:
    """Training compute C of a run that sees `tokens` tokens at length `seq_len`."""
    return training_flops_per_token(model, seq_len) * float(tokens)


def tokens_for_flops(model, seq_len: int, flops: float) -> float:
    """Tokens a budget of `flops` training FLOPs buys for this model."""
    if flops <= 0:
        raise ValueError(f"compute budget must be > 0 FLOPs, got {flops}")
    return float(flops) / training_flops_per_token(model, seq_len)


def matmul_params(model) -> int:
    """Non-embedding weights used in matmuls: the N of the 6·N term."""
    d, h, k, dh, f, _, n = _dims(model)
    return n * (d * (h + 2 * k) * dh + h * dh * d + 3 * d * f)


def param_count(model, *, embeddings: bool = True) -> int:
    """Parameters of the backbone; without embeddings drops embed_tokens and lm_head."""
    d, h, k, dh, f, v, n = _dims(model)
    per_layer = d * (h + 2 * k) * dh + h * dh * d + 3 * d * f + 2 * d
    if model.qk_norm:
        per_layer += 2 * dh
    body = n * per_layer + d  # final norm
    if not embeddings:
        return body
    return body + v * d * (1 if model.tie_embeddings else 2)


def accounting(model, seq_len: int) -> dict:
    """Counts and per-token FLOPs of one model, as a JSON-ready dict."""
    return {
        "params": param_count(model),
        "params_non_embedding": param_count(model, embeddings=False),
        "params_matmul": matmul_params(model),
        "seq_len": seq_len,
        "flops_per_token": flops_breakdown(model, seq_len).as_dict(),
    }
