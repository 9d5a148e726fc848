"""KV-cache decoding, the one sampler: greedy, temperature, top-k, top-p, a block grammar, guidance.

Dimensions: B batch, P prompt length, N new tokens, S cache length, V vocab.

Prompts of different lengths are left-padded: padding gets segment id 0 and
real tokens segment 1, so padding is never attended to, and positions count
from each prompt's first real token. The prompt is run once (prefill), then
one token per step under `jax.lax.fori_loop`, reusing the cache; shapes are
static, so one compiled program serves every batch of the same size.

Each step samples only the ids `BlockRules` allows after what came before
(inside a media block: that modality's codes, the exact block length, then its
end marker); a row that has emitted `<eos>` emits `<pad>` from then on. With a
continuous image head (`model.image_output` regression / diffusion), an image
code position takes the code of the latent the head samples instead of a draw
from the logits (`continuous_codes`); the code is fed back like any other.
Classifier-free guidance runs each prompt beside its context-free version and
samples from cond + (S − 1)·(cond − free).

Masks: the prefill uses the model's `attention_mask` kind through the one
builder, with the prompt's loss mask as training would have it (`prompt_groups`):
its tokens are context except the last one (it predicts the first new token)
and, when the prompt ends inside an open media block, that block and the token
before it. So a context image in the prompt is bidirectional exactly as in the
full forward; new tokens are causal.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.data.packing import block_ids
from mmntp_jax.data.vocab import END_IDS
from mmntp_jax.model.continuous_output import guided
from mmntp_jax.model.heads import logits as head_logits
from mmntp_jax.model.image_reader import context_groups
from mmntp_jax.model.init import bind


def left_pad(prompts: list[np.ndarray], pad_id: int = 0, length: int = 0):
    """ids [B, P], segment ids [B, P] (0 padding, 1 real), positions [B, P];
    P = the longest prompt, or `length` when that is longer."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    p = max(length, max(len(x) for x in prompts))
    ids = np.full((len(prompts), p), pad_id, np.int32)
    seg = np.zeros((len(prompts), p), np.int32)
    pos = np.zeros((len(prompts), p), np.int32)
    for i, x in enumerate(prompts):
        ids[i, p - len(x):] = x
        seg[i, p - len(x):] = 1
        pos[i, p - len(x):] = np.arange(len(x))
    return ids, seg, pos


def prompt_loss_mask(ids_BP, segments_BP):
    """(float32 [B, P] 1 where the prompt's target would be trained, block ids [B, P])."""
    p = ids_BP.shape[1]
    blocks_BP = block_ids(ids_BP, xp=jnp) * (segments_BP > 0)
    last_B = blocks_BP[:, -1]
    open_B = (last_B != 0) & ~jnp.isin(ids_BP[:, -1], jnp.asarray(END_IDS))
    first_B = jnp.argmax(blocks_BP == last_B[:, None], axis=1)
    trained_from_B = jnp.where(open_B, first_B - 1, p - 1)
    return (jnp.arange(p)[None] >= trained_from_B[:, None]).astype(jnp.float32), blocks_BP


def prompt_groups(model, ids_BP, segments_BP):
    """Bidirectional group ids [B, P] of left-padded prompts under the model's mask kind."""
    loss_BP, blocks_BP = prompt_loss_mask(ids_BP, segments_BP)
    return model.groups(segments_BP, blocks_BP, loss_BP)


def prompt_context(model, ids_BP, segments_BP):
    """The prompts' context image blocks for the image reader [B, P] (None without one)."""
    if model.cfg.image_reader == "none":
        return None
    loss_BP, blocks_BP = prompt_loss_mask(ids_BP, segments_BP)
    return context_groups(ids_BP, segments_BP, blocks_BP, loss_BP)


def filter_logits(logits_BV, temperature: float, top_k: int, top_p: float):
    """Logits / T with everything outside the top-k and the top-p nucleus at -inf."""
    logits_BV = logits_BV / temperature
    if top_k:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # mass of the ids ranked above
        kept_B = jnp.maximum(jnp.sum(before_BV < top_p, axis=-1), 1)
        cutoff_B1 = jnp.take_along_axis(sorted_BV, kept_B[:, None] - 1, axis=-1)
        logits_BV = jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)
    return logits_BV


def sample_token(logits_BV, key, temperature: float, top_k: int = 0, top_p: float = 1.0, allowed_BV=None):
    """Greedy when temperature == 0; else softmax(logits / T) over the top-k / top-p ids.
    `allowed_BV` (bool, broadcastable) removes every other id first."""
    logits_BV = logits_BV.astype(jnp.float32)
    if allowed_BV is not None:
        logits_BV = jnp.where(allowed_BV, logits_BV, -jnp.inf)
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BV, temperature, top_k, top_p), axis=-1).astype(jnp.int32)


def continuous_codes(head, hidden_BD, key, temperature: float, guidance, allowed_BV, token_B):
    """`token_B` with each row at an image-code position (its allowed ids are codes) replaced by
    the code of a latent sampled from the continuous image head (model/continuous_output.py);
    the head runs only when some row is at such a position."""
    code_V = head.table()[:, -1] > 0
    at_code_B = jnp.any(allowed_BV & code_V[None], axis=-1)
    sampled_B = jax.lax.cond(jnp.any(at_code_B), lambda: head.sample_codes(hidden_BD, jax.random.fold_in(key, 1), temperature, guidance),
                             lambda: token_B)
    return jnp.where(at_code_B, sampled_B, token_B)


@functools.partial(jax.jit, static_argnames=("graph", "max_new_tokens", "temperature", "top_k", "top_p", "rules", "guidance", "image_first"))
def generate_ids(graph, params, ids_BP, segments_BP, positions_BP, key, *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, rules=None, block_B=None, filled_B=None, guidance: float | None = None, image_first: bool = False):
    """Returns [B, N] new token ids continuing each (left-padded) prompt.

    rules: a `BlockRules`; each step samples only ids it allows, from the state
    (`block_B`, `filled_B`, see `BlockRules.state_after`) at the end of each prompt;
    after `<eos>` a row emits `<pad>` (id 0). guidance: the batch is [B/2
    conditional prompts; their B/2 context-free versions]; each pair's logits are
    combined by `guided`, and both rows get the pair's token (outputs of both halves
    are equal; callers read the first). image_first: every prompt ends in `<boi>`;
    a model with the block diffusion form denoises that block at once
    (`diffusion_block.denoise_block`) and then goes on token by token.
    """
    model = bind(graph, params)
    b, p = ids_BP.shape
    v = model.head_kernel().shape[-1]
    cache = model.init_cache(b, p + max_new_tokens)
    hidden_BPD, cache = model.decode(ids_BP, positions_BP, segments_BP, cache, 0, prompt_groups(model, ids_BP, segments_BP),
                                     context_BT=prompt_context(model, ids_BP, segments_BP))
    w_DV = model.head_kernel()
    head = getattr(model, "image_head", None)
    block_form = head is not None and head.form == "block"
    next_pos_B = positions_BP[:, -1] + 1
    rows = b // 2 if guidance is not None else b
    state = (jnp.full((rows,), -1, jnp.int32) if block_B is None else block_B[:rows], jnp.zeros((rows,), jnp.int32) if filled_B is None else filled_B[:rows],
             jnp.zeros((rows,), bool))

    def pick(hidden_B1D, i, state):
        logits_BV = head_logits(hidden_B1D, w_DV)[:, 0].astype(jnp.float32)
        logits_BV = guided(logits_BV, guidance)
        block, filled, ended = state
        allowed_BV = rules.allowed(block, filled, v) if rules is not None else jnp.ones((rows, v), bool)
        if block_form and rules is not None:  # images come only from prompts that open them
            allowed_BV = allowed_BV & (jnp.arange(v) != rules.begin_ids[rules.media.index("image")])
        allowed_BV = jnp.where(ended[:, None], jnp.arange(v) == 0, allowed_BV)
        token_B = sample_token(logits_BV, jax.random.fold_in(key, i), temperature, top_k, top_p, allowed_BV)
        if head is not None and not block_form and rules is not None:
            token_B = continuous_codes(head, hidden_B1D[:, 0], jax.random.fold_in(key, i), temperature, guidance, allowed_BV, token_B)
        block, filled = rules.advance(block, filled, token_B) if rules is not None else (block, filled)
        ended = ended | (token_B == 2)  # <eos>
        token_B = jnp.concatenate([token_B, token_B]) if guidance is not None else token_B
        return token_B, (block, filled, ended)

    out_BN = jnp.zeros((b, max_new_tokens), jnp.int32)
    start, last_B1D = 0, hidden_BPD[:, -1:]
    if block_form and image_first:
        from mmntp_jax.model.diffusion_block import denoise_block

        start = rules.block_length("image")
        if max_new_tokens <= start:
            raise ValueError(f"max_new_tokens={max_new_tokens}: an image block needs {start} codes and its end marker")
        codes_BN, last_B1D, cache = denoise_block(model, cache, p, next_pos_B[:, None] + jnp.arange(start), jax.random.fold_in(key, max_new_tokens),
                                                  temperature=temperature, guidance=guidance)
        out_BN = out_BN.at[:, :start].set(jnp.concatenate([codes_BN, codes_BN]) if guidance is not None else codes_BN)
        state = (state[0], state[1] + start, state[2])
    first, state = pick(last_B1D, start, state)
    out_BN = out_BN.at[:, start].set(first)

    def body(i, carry):
        out_BN, cache, state = carry
        token_B1 = jax.lax.dynamic_slice_in_dim(out_BN, i - 1, 1, axis=1)
        pos_B1 = (next_pos_B + i - 1)[:, None]
        hidden_B1D, cache = model.decode(token_B1, pos_B1, jnp.ones((b, 1), jnp.int32), cache, p + i - 1)
        token, state = pick(hidden_B1D, i, state)
        return out_BN.at[:, i].set(token), cache, state

    out_BN, _, _ = jax.lax.fori_loop(start + 1, max_new_tokens, body, (out_BN, cache, state))
    return out_BN
