"""Continuous image output: each next image token predicted as its tokenizer's latent, by regression or by a per-token denoiser.

Dimensions: B batch, T time, D model dim, V vocab, F latent dim, G = F + 1 (a
table row: the latent and a 1/0 "is a continuous token" flag), W denoiser
width, L denoiser blocks, K noise draws per target, E time-embedding width.

`model.image_output` (config.py) chooses what the hidden state h_t at a
position whose target is an image code is trained to produce:

    discrete    the code's logit, through `lm_head` (heads.py)
    regression  the code's latent x0 ∈ R^F: pred = h_t · kernel + bias, loss
                `model.regression_loss` = mse (mean over F of (pred − x0)²) or
                cosine (1 − cos(pred, x0)); continuous-token prediction (CTP)
    diffusion   `model.diffusion_form=block`: the whole image block is noised in
                the sequence and denoised at once (Transfusion; diffusion_block.py);
                `token`: a sample of x0: a small MLP denoiser conditioned on h_t (the
                per-token form of MAR, Li et al. 2024) is trained by flow
                matching: x_t = (1 − t)·x0 + t·ε, ε ~ N(0, I), t ~ U(0, 1),
                (an MLP of residual blocks, conditioned by adding h_t·cond + time(t)
                before each block),
                loss = mean over F of (v(x_t, t, h_t) − (ε − x0))², averaged
                over K = `model.diffusion_samples` draws of (t, ε) per target

The latent of a code is what the image tokenizer's decoder reads for it (an
FSQ grid point, a VQ row, LFQ/BSQ signs), taken from the frozen table
`latents [V, G]` filled from the tokenizer at initialisation, as for the
continuous input (continuous_input.py): the data keeps carrying codes, and the
target latent is a lookup of the target id. A generated latent becomes the
code whose latent is nearest (`nearest_code`; for FSQ exactly its
quantization), which is fed back as the next input and decoded to pixels by
the tokenizer, so the KV cache, the block grammar and decoding are unchanged.

Text, markers and every other target keep the cross-entropy; an image target
contributes its continuous loss instead, weighted by `train.loss_weights`'
image entry (λ of Transfusion's text CE + λ·diffusion).

Sampling (`sample_latents`): regression returns the prediction; diffusion
integrates the flow ODE dx/dt = v from t = 1 (noise scaled by the
temperature: 0 starts at the origin, so greedy sampling is deterministic) to
t = 0 in `model.diffusion_steps` Euler steps (`euler_sample`). With
classifier-free guidance each prediction / velocity is cond + (S − 1)·(cond −
free), as for logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mmntp_jax.model.diffusion_block import BlockDiffusion
from mmntp_jax.model.layers import param

TIME_FEATURES = 64  # E: sinusoidal features of t


def table_rows(table_VG, ids_BT):
    """(latent [B, T, F], flag [B, T]) of each id's table row (no gradient into the table)."""
    row_BTG = jnp.take(jax.lax.stop_gradient(table_VG), ids_BT, axis=0)
    return row_BTG[..., :-1], row_BTG[..., -1]


def regression_loss(pred_BTF, target_BTF, kind: str):
    """Per-token loss [B, T]: mse = mean over F of the squared error; cosine = 1 − cos."""
    pred_BTF, target_BTF = pred_BTF.astype(jnp.float32), target_BTF.astype(jnp.float32)
    if kind == "mse":
        return jnp.mean(jnp.square(pred_BTF - target_BTF), axis=-1)
    dot_BT = jnp.sum(pred_BTF * target_BTF, axis=-1)
    norms_BT = jnp.linalg.norm(pred_BTF, axis=-1) * jnp.linalg.norm(target_BTF, axis=-1)
    return 1.0 - dot_BT / jnp.maximum(norms_BT, 1e-8)


def flow_pair(x0_NF, noise_NF, t_N):
    """(x_t, velocity target) of rectified flow: x_t = (1 − t)·x0 + t·ε, v = ε − x0."""
    t_N1 = t_N[:, None]
    return (1.0 - t_N1) * x0_NF + t_N1 * noise_NF, noise_NF - x0_NF


def flow_matching_loss(denoiser, x0_NF, h_ND, t_N, noise_NF, cond_NW=None):
    """[N] mean over F of (v(x_t, t, h) − (ε − x0))² at the given noise levels and noise."""
    x_t_NF, v_NF = flow_pair(x0_NF.astype(jnp.float32), noise_NF, t_N)
    return jnp.mean(jnp.square(denoiser(x_t_NF, t_N, h_ND, cond_NW=cond_NW) - v_NF), axis=-1)


def time_features(t_N):
    """[N, E] sinusoidal features of t ∈ [0, 1] (frequencies 1 … 1000, as timestep embeddings)."""
    half = TIME_FEATURES // 2
    freq_E = jnp.exp(-math.log(1000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angle_NE = 1000.0 * t_N[:, None].astype(jnp.float32) * freq_E[None]
    return jnp.concatenate([jnp.cos(angle_NE), jnp.sin(angle_NE)], axis=-1)


def euler_sample(velocity, noise_NF, steps: int):
    """Integrates dx/dt = velocity(x, t) from t = 1 (x = noise) to t = 0 in `steps` Euler steps."""
    dt = 1.0 / steps

    def body(i, x_NF):
        t = 1.0 - i * dt
        return x_NF - dt * velocity(x_NF, jnp.full((x_NF.shape[0],), t, jnp.float32))

    return jax.lax.fori_loop(0, steps, body, noise_NF.astype(jnp.float32))


def nearest_code(latent_NF, table_VG):
    """[N] the id whose flagged table row's latent is nearest to each latent."""
    codes_VF, flag_V = table_VG[:, :-1], table_VG[:, -1]
    d_NV = jnp.sum(jnp.square(latent_NF[:, None, :].astype(jnp.float32) - codes_VF[None]), axis=-1)
    return jnp.argmin(jnp.where(flag_V[None] > 0, d_NV, jnp.inf), axis=-1).astype(jnp.int32)


def _layer_norm(x_NW):
    mean_N1 = jnp.mean(x_NW, axis=-1, keepdims=True)
    var_N1 = jnp.var(x_NW, axis=-1, keepdims=True)
    return (x_NW - mean_N1) * jax.lax.rsqrt(var_N1 + 1e-6)


def guided(x_NF, guidance):
    """Classifier-free guidance over a batch [conditional rows; context-free rows] of logits,
    latents or velocities: cond + (S − 1)·(cond − free) for each pair (S = 1 gives cond
    exactly; None: `x_NF` unchanged)."""
    if guidance is None:
        return x_NF
    cond, free = jnp.split(x_NF, 2, axis=0)
    return cond + (guidance - 1.0) * (cond - free)


class Denoiser(nnx.Module):
    """v(x_t, t, h): an MLP of L pre-norm residual blocks over y = x_t·in + c, c = h·cond + time(t) added before each block.

    The condition h·cond is computed once per position and shared by its K noise
    draws (`condition`), so the per-draw cost is the W×W blocks alone.
    """

    def __init__(self, d_model: int, feature_dim: int, width: int, depth: int, std: float, *, rngs: nnx.Rngs):
        self.depth = depth
        self.cond_proj = param(rngs, (d_model, width), ("embed", None), std=std)
        self.time_proj = param(rngs, (TIME_FEATURES, width), (None, None), std=1.0 / math.sqrt(TIME_FEATURES))
        self.in_proj = param(rngs, (feature_dim, width), (None, None), std=1.0 / math.sqrt(feature_dim))
        self.in_bias = param(rngs, (width,), (None,), value=0.0)
        self.fc1 = param(rngs, (depth, width, width), (None, None, None), std=1.0 / math.sqrt(width))
        self.fc1_bias = param(rngs, (depth, width), (None, None), value=0.0)
        self.fc2 = param(rngs, (depth, width, width), (None, None, None), value=0.0)  # zero: each block starts as the identity
        self.fc2_bias = param(rngs, (depth, width), (None, None), value=0.0)
        self.out_proj = param(rngs, (width, feature_dim), (None, None), std=1.0 / math.sqrt(width))
        self.out_bias = param(rngs, (feature_dim,), (None,), value=0.0)

    def condition(self, h_ND):
        """[N, W] the hidden state's share of c."""
        return jnp.einsum("ND,DW->NW", h_ND.astype(jnp.float32), self.cond_proj[...].astype(jnp.float32))

    def __call__(self, x_NF, t_N, h_ND=None, *, cond_NW=None):
        """Velocity [N, F]; give the hidden states `h_ND` or their `condition` as `cond_NW`."""
        f32 = lambda p: p[...].astype(jnp.float32)
        cond_NW = self.condition(h_ND) if cond_NW is None else cond_NW
        c_NW = cond_NW + time_features(t_N) @ f32(self.time_proj)
        y_NW = x_NF.astype(jnp.float32) @ f32(self.in_proj) + f32(self.in_bias)
        for i in range(self.depth):
            z_NW = _layer_norm(y_NW + c_NW)
            y_NW = y_NW + jax.nn.silu(z_NW @ f32(self.fc1)[i] + f32(self.fc1_bias)[i]) @ f32(self.fc2)[i] + f32(self.fc2_bias)[i]
        return _layer_norm(y_NW + c_NW) @ f32(self.out_proj) + f32(self.out_bias)


class ContinuousOutput(nnx.Module):
    """The image-output head of `model.image_output` regression / diffusion (parameters `image_head.*`)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        f = cfg.image_feature_dim
        self.mode, self.loss_kind = cfg.image_output, cfg.regression_loss
        self.form = cfg.diffusion_form if self.mode == "diffusion" else ""
        self.samples, self.steps = cfg.diffusion_samples, cfg.diffusion_steps
        self.latents = param(rngs, (cfg.vocab_size, f + 1), ("vocab", None), value=0.0)
        if self.mode == "regression":
            self.kernel = param(rngs, (cfg.d_model, f), ("embed", None), std=cfg.init_std)
            self.bias = param(rngs, (f,), (None,), value=0.0)
        elif self.form == "block":
            self.block = BlockDiffusion(cfg.d_model, f, cfg.init_std, rngs=rngs)
        else:
            self.denoiser = Denoiser(cfg.d_model, f, cfg.diffusion_width, cfg.diffusion_depth, cfg.init_std, rngs=rngs)

    def table(self):
        return jax.lax.stop_gradient(self.latents[...])

    def predict(self, hidden_BTD):
        """Regression: the predicted latent [B, T, F]."""
        return jnp.einsum("BTD,DF->BTF", hidden_BTD.astype(jnp.float32), self.kernel[...].astype(jnp.float32)) + self.bias[...]

    def losses(self, hidden_BTD, targets_BT, key):
        """(per-token continuous loss [B, T], flag [B, T]: 1 where the target is a continuous token);
        regression and the per-token diffusion form (the block form: diffusion_block.py)."""
        target_BTF, flag_BT = table_rows(self.latents[...], targets_BT)
        if self.mode == "regression":
            return regression_loss(self.predict(hidden_BTD), target_BTF, self.loss_kind), flag_BT
        b, t, f = target_BTF.shape
        k = self.samples
        t_key, noise_key = jax.random.split(key)
        x0_NF = jnp.broadcast_to(target_BTF[None], (k, b, t, f)).reshape(-1, f)
        cond_MW = self.denoiser.condition(hidden_BTD.reshape(b * t, -1))
        cond_NW = jnp.broadcast_to(cond_MW[None], (k, *cond_MW.shape)).reshape(k * b * t, -1)
        t_N = jax.random.uniform(t_key, (k * b * t,), jnp.float32)
        err_N = flow_matching_loss(self.denoiser, x0_NF, None, t_N, jax.random.normal(noise_key, x0_NF.shape, jnp.float32), cond_NW)
        return jnp.mean(err_N.reshape(k, b, t), axis=0), flag_BT

    def sample_latents(self, hidden_ND, key, temperature: float, guidance=None):
        """[N', F] one latent per row (N' = N/2 under guidance: rows are [cond; free])."""
        if self.mode == "regression":
            return guided(self.predict(hidden_ND[:, None])[:, 0], guidance)
        rows = hidden_ND.shape[0] // (2 if guidance is not None else 1)
        noise_NF = temperature * jax.random.normal(key, (rows, self.latents.shape[1] - 1), jnp.float32)

        cond_NW = self.denoiser.condition(hidden_ND)

        def velocity(x_NF, t_N):
            if guidance is None:
                return self.denoiser(x_NF, t_N, cond_NW=cond_NW)
            both = lambda a: jnp.concatenate([a, a], axis=0)
            return guided(self.denoiser(both(x_NF), both(t_N), cond_NW=cond_NW), guidance)

        return euler_sample(velocity, noise_NF, self.steps)

    def sample_codes(self, hidden_ND, key, temperature: float, guidance=None):
        """[N'] the code nearest to each sampled latent."""
        return nearest_code(self.sample_latents(hidden_ND, key, temperature, guidance), self.table())
