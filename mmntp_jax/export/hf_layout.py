"""The correspondence between our parameter tree and Hugging Face Llama / Qwen3.

Dimensions: L layers, D model dim, H query heads, K kv heads, E head dim,
F ffn dim, V vocab.

Our kernels are [in, out] with heads split out and layers stacked; Hugging Face
`nn.Linear` weights are [out, in] with heads flattened, one tensor per layer.
RoPE uses the same rotate_half layout in both, so no permutation of q/k rows is
needed. Per layer i (ours → Hugging Face `model.layers.{i}.…`):

    layers.self_attn.q_proj [L, D, H, E]  → self_attn.q_proj.weight [H·E, D]
    layers.self_attn.{k,v}_proj [L, D, K, E] → self_attn.{k,v}_proj.weight [K·E, D]
    layers.self_attn.o_proj [L, H, E, D]  → self_attn.o_proj.weight [D, H·E]
    layers.self_attn.{q,k}_norm.weight [L, E] → self_attn.{q,k}_norm.weight [E] (Qwen3)
    layers.mlp.{gate,up}_proj [L, D, F]   → mlp.{gate,up}_proj.weight [F, D]
    layers.mlp.down_proj [L, F, D]        → mlp.down_proj.weight [D, F]
    layers.{input,post_attention}_layernorm.weight [L, D] → same name [D]
and globally embed_tokens.embedding [V, D] → model.embed_tokens.weight [V, D],
norm.weight → model.norm.weight, lm_head [D, V] → lm_head.weight [V, D]
(absent when embeddings are tied).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmntp_jax.config import ModelConfig


class NotExpressible(ValueError):
    """The model has something neither LlamaForCausalLM nor Qwen3ForCausalLM can represent."""


@dataclass(frozen=True)
class Mapping:
    ours: str  # flattened name in our params tree
    hf: str  # Hugging Face name; "{i}" marks a per-layer tensor
    kind: str  # "copy", "linear", "in_heads" or "out_heads"

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


LAYER = "model.layers.{i}."
GLOBAL_MAPPINGS = (
    Mapping("embed_tokens.embedding", "model.embed_tokens.weight", "copy"),
    Mapping("norm.weight", "model.norm.weight", "copy"),
    Mapping("lm_head", "lm_head.weight", "linear"),
)
LAYER_MAPPINGS = (
    Mapping("layers.input_layernorm.weight", LAYER + "input_layernorm.weight", "copy"),
    Mapping("layers.self_attn.q_proj", LAYER + "self_attn.q_proj.weight", "in_heads"),
    Mapping("layers.self_attn.k_proj", LAYER + "self_attn.k_proj.weight", "in_heads"),
    Mapping("layers.self_attn.v_proj", LAYER + "self_attn.v_proj.weight", "in_heads"),
    Mapping("layers.self_attn.o_proj", LAYER + "self_attn.o_proj.weight", "out_heads"),
    Mapping("layers.self_attn.q_norm.weight", LAYER + "self_attn.q_norm.weight", "copy"),
    Mapping("layers.self_attn.k_norm.weight", LAYER + "self_attn.k_norm.weight", "copy"),
    Mapping("layers.post_attention_layernorm.weight", LAYER + "post_attention_layernorm.weight", "copy"),
    Mapping("layers.mlp.gate_proj", LAYER + "mlp.gate_proj.weight", "linear"),
    Mapping("layers.mlp.up_proj", LAYER + "mlp.up_proj.weight", "linear"),
    Mapping("layers.mlp.down_proj", LAYER + "mlp.down_proj.weight", "linear"),
)
MAPPINGS = GLOBAL_MAPPINGS + LAYER_MAPPINGS

# ModelConfig fields that change only how the same function is computed or
# initialised, not the function itself; every other field must be mapped.
COMPUTE_ONLY_FIELDS = {"init_std", "dtype", "param_dtype", "attention", "attention_block", "remat", "scan_layers", "max_seq_len"}
MAPPED_FIELDS = {"vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "rope_theta", "qk_norm", "tie_embeddings", "norm_eps"}


def to_hf(kind: str, x: np.ndarray) -> np.ndarray:
    """One layer's (or a global) array in our layout → Hugging Face layout."""
    if kind == "copy":
        return x
    if kind == "linear":  # [in, out] → [out, in]
        return x.T
    if kind == "in_heads":  # [D, heads, E] → [heads·E, D]
        return x.reshape(x.shape[0], -1).T
    if kind == "out_heads":  # [H, E, D] → [D, H·E]
        return x.reshape(-1, x.shape[-1]).T
    raise ValueError(f"unknown mapping kind {kind!r}")


def from_hf(kind: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `to_hf`; `shape` is our per-layer (or global) shape."""
    if kind == "copy":
        return x.reshape(shape)
    if kind == "linear":
        return x.T.reshape(shape)
    if kind == "in_heads":  # [heads·E, D] → [D, heads, E]
        return x.T.reshape(shape)
    if kind == "out_heads":  # [D, H·E] → [H, E, D]
        return x.T.reshape(shape)
    raise ValueError(f"unknown mapping kind {kind!r}")


def hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return to_hf(kind, np.empty(shape, np.uint8)).shape


def architecture(cfg: ModelConfig) -> str:
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def check_expressible(cfg: ModelConfig, param_names) -> None:
    """Raises NotExpressible naming the first config field or parameter with no HF counterpart."""
    defaults = ModelConfig()
    if cfg.attention_mask != defaults.attention_mask:
        raise NotExpressible(
            f"model.attention_mask={cfg.attention_mask!r} cannot be exported: transformers' {architecture(cfg)} attends causally, "
            f"while this run lets context tokens ({'the document prefix' if cfg.attention_mask == 'prefix' else 'context media blocks'}) "
            "attend bidirectionally, so the exported model would compute different logits; train with model.attention_mask='causal' to export"
        )
    if cfg.image_input != defaults.image_input:
        raise NotExpressible(
            f"model.image_input={cfg.image_input!r} cannot be exported: image codes enter this model through its "
            f"multi_modal_projector (the image tokenizer's latents, projected), which transformers' {architecture(cfg)} does not have; "
            "train with model.image_input='discrete' to export (mmntp export stablehlo keeps the whole model)"
        )
    if cfg.image_output != defaults.image_output:
        raise NotExpressible(
            f"model.image_output={cfg.image_output!r} cannot be exported: this model predicts image tokens with its image_head "
            f"(a latent {'regression' if cfg.image_output == 'regression' else 'denoiser'}), which transformers' {architecture(cfg)} does not have; "
            "train with model.image_output='discrete' to export"
        )
    if cfg.image_reader != defaults.image_reader:
        raise NotExpressible(
            f"model.image_reader={cfg.image_reader!r} cannot be exported: context images enter this model through its image_reader "
            f"({'convolutions over the code grid' if cfg.image_reader == 'conv' else 'the tokenizer decoder and a CNN over the decoded pixels'}), "
            f"which transformers' {architecture(cfg)} does not have; train with model.image_reader='none' to export"
        )
    for name in sorted(set(cfg.__dataclass_fields__) - COMPUTE_ONLY_FIELDS - MAPPED_FIELDS):
        if getattr(cfg, name) != getattr(defaults, name):
            raise NotExpressible(f"model.{name}={getattr(cfg, name)!r} has no counterpart in LlamaForCausalLM or Qwen3ForCausalLM")
    known = {m.ours for m in MAPPINGS}
    unknown = sorted(set(param_names) - known)
    if unknown:
        raise NotExpressible(f"parameters {', '.join(unknown)} have no counterpart in {architecture(cfg)}; only the text backbone exports")
    expected = expected_params(cfg)
    missing = sorted(expected - set(param_names))
    extra = sorted(set(param_names) - expected)
    if missing or extra:
        raise NotExpressible(f"checkpoint parameters do not match the config (missing: {missing or 'none'}; unexpected: {extra or 'none'})")


def expected_params(cfg: ModelConfig) -> set[str]:
    names = {m.ours for m in MAPPINGS}
    if cfg.tie_embeddings:
        names.discard("lm_head")
    if not cfg.qk_norm:
        names -= {"layers.self_attn.q_norm.weight", "layers.self_attn.k_norm.weight"}
    return names


def hf_config(cfg: ModelConfig, dtype: str, *, bos_id: int, eos_id: int, pad_id: int) -> dict:
    """config.json for LlamaForCausalLM (or Qwen3ForCausalLM with qk_norm)."""
    arch = architecture(cfg)
    out = {
        "architectures": [arch],
        "model_type": "qwen3" if cfg.qk_norm else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if cfg.qk_norm:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers, layer_types=["full_attention"] * cfg.n_layers)
    else:
        out.update(mlp_bias=False, pretraining_tp=1)
    return out


IMPORTABLE_TYPES = ("llama", "mistral", "qwen3")


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise NotExpressible(f"config.json: RoPE scaling {kind!r} is not supported (only plain RoPE)")
    return float(hf.get("rope_theta", params.get("rope_theta", 10000.0)))


def model_config_from_hf(hf: dict, base: ModelConfig, vocab_size: int) -> ModelConfig:
    """Our ModelConfig for a Hugging Face Llama/Mistral/Qwen3 config.json (inverse of `hf_config`).

    Fields that only affect compute (dtype, attention implementation, remat …)
    come from `base`; anything the backbone cannot represent raises NotExpressible.
    """
    import dataclasses

    model_type = hf.get("model_type")
    if model_type not in IMPORTABLE_TYPES:
        raise NotExpressible(f"config.json: model_type {model_type!r} is not importable; expected one of {', '.join(IMPORTABLE_TYPES)}")
    checks = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (bool(hf.get("attention_bias", False)), False),
        "mlp_bias": (bool(hf.get("mlp_bias", False)), False),
        "use_sliding_window": (bool(hf.get("use_sliding_window", False)), False),
    }
    for key, (value, wanted) in checks.items():
        if value != wanted:
            raise NotExpressible(f"config.json: {key}={value!r} is not supported (the backbone needs {wanted!r})")
    window = hf.get("sliding_window")
    if model_type == "mistral" and window is not None and window < hf.get("max_position_embeddings", 0):
        raise NotExpressible(f"config.json: sliding_window={window} is not supported (full attention only)")
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise NotExpressible("config.json: layer_types other than full_attention are not supported")
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d_model // n_heads)
    return dataclasses.replace(
        base,
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        d_ff=int(hf["intermediate_size"]),
        rope_theta=_rope_theta(hf),
        qk_norm=model_type == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(hf.get("max_position_embeddings", base.max_seq_len)),
        init_std=float(hf.get("initializer_range", base.init_std)),
    )
