"""Parameter counts and training FLOPs, the one formula behind MFU and scaling fits.

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
"""

from __future__ import annotations

from dataclasses import dataclass


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


def flops_breakdown(model, seq_len: int) -> FlopsBreakdown:
    """Training FLOPs per token for a `ModelConfig` at sequence length `seq_len`."""
    d, h, k, dh, f, v, n = (
        model.d_model, model.n_heads, model.n_kv_heads, model.resolved_head_dim, model.d_ff, model.vocab_size, model.n_layers,
    )
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


def param_count(model, *, embeddings: bool = True) -> int:
    """Parameters of the backbone; without embeddings drops embed_tokens and lm_head."""
    d, h, k, dh, f, v, n = (
        model.d_model, model.n_heads, model.n_kv_heads, model.resolved_head_dim, model.d_ff, model.vocab_size, model.n_layers,
    )
    per_layer = d * (h + 2 * k) * dh + h * dh * d + 3 * d * f + 2 * d
    if model.qk_norm:
        per_layer += 2 * dh
    body = n * per_layer + d  # final norm
    if not embeddings:
        return body
    return body + v * d * (1 if model.tie_embeddings else 2)
