"""Generation: the sampler under the block grammar, top-p, guidance, prompts laid out as
training documents, caption dropout, and one-line errors for bad prompts.

References: the Vocab's own id ranges, numpy top-p, the training document assembler
(`assemble_document`), and the same sampler without guidance.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.config import ModelConfig
from mmntp_jax.data.documents import ContextDropout, assemble_document
from mmntp_jax.data.vocab import BEGIN_IDS, Vocab
from mmntp_jax.generation.prompts import PromptError, encode_prompt, fit_length
from mmntp_jax.model.block_rules import BlockRules
from mmntp_jax.model.generate import filter_logits, generate_ids, left_pad
from mmntp_jax.model.init import graphdef, init_params
from mmntp_jax.tokenizers.media import MediaError
from mmntp_jax.tokenizers.text import ByteTokenizer

VOCAB = Vocab.build(text=256, image=24)
N_IMAGE = 6
CFG = ModelConfig(vocab_size=VOCAB.size, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=128, attention_mask="block")


@pytest.fixture(scope="module")
def model():
    return graphdef(CFG), init_params(CFG, jax.random.key(0))


class FakeMedia:
    """Stands in for RunMedia: an 'image' is encoded as its first N_IMAGE pixel values × 23."""

    def fit(self, modality, item, what):
        if modality != "image":
            raise MediaError(f"{what}: this run has no {modality} tokenizer")
        x = np.asarray(item, np.float32)
        if x.ndim != 3 or x.shape[-1] != 3:
            raise MediaError(f"{what}: an image array of shape {x.shape}; expected [H, W, 3]")
        return x

    def encode(self, modality, items):
        return [VOCAB.to_global("image", (self.fit(modality, x, "item").reshape(-1)[:N_IMAGE] * 23).astype(np.int64)) for x in items]


def encode(segments):
    return encode_prompt(segments, VOCAB, ByteTokenizer(VOCAB), FakeMedia())


def test_prompts_are_training_documents_cut_where_the_model_continues():
    image = np.linspace(0, 1, 4 * 4 * 3).reshape(4, 4, 3)
    codes = FakeMedia().encode("image", [image])[0]
    text = ByteTokenizer(VOCAB)
    draw = assemble_document([("text", text.encode("a red circle"), False), ("image", codes, True)], VOCAB)["tokens"]
    p = encode([{"type": "text", "text": "a red circle"}, {"type": "image"}])
    assert p.generate == "image" and p.ids.tolist() == draw[: draw.tolist().index(VOCAB.markers("image")[0]) + 1].tolist()
    assert p.context_free.tolist() == [VOCAB.bos_id, VOCAB.markers("image")[0]]
    caption = assemble_document([("image", codes, False), ("text", text.encode(" x"), True)], VOCAB)["tokens"]
    q = encode([{"type": "image", "array": image}, {"type": "text"}])
    assert q.generate == "text" and q.ids.tolist() == caption[: len(codes) + 3].tolist()
    assert encode("def ").ids.tolist() == [VOCAB.bos_id, *text.encode("def ").tolist()]


@pytest.mark.parametrize("segments, message", [
    ([{"type": "smell"}], "type 'smell'"),
    ([{"type": "image"}, {"type": "text", "text": "x"}], "only the last segment"),
    ([{"type": "image", "array": np.zeros((4, 4, 5))}, {"type": "text"}], "shape \\(4, 4, 5\\)"),
    ([{"type": "audio", "path": "a.wav"}, {"type": "text"}], "no audio tokenizer"),
    ([], "non-empty list"),
])
def test_bad_prompts_are_one_line_errors(segments, message):
    with pytest.raises(PromptError, match=message) as err:
        encode(segments)
    assert "\n" not in str(err.value)


def test_prompt_longer_than_context_is_an_error_and_text_is_cut_to_fit():
    assert fit_length([encode("x" * 100), encode("y")], 64, CFG.max_seq_len, exact=False) == 128 - 101
    with pytest.raises(PromptError, match="prompt 0: 130 ids exceed the model's context of 128"):
        fit_length([encode("x" * 129)], 16, CFG.max_seq_len, exact=False)
    with pytest.raises(PromptError, match="prompt 1: 121 ids \\+ 10 for its block exceed the model's context of 128"):
        fit_length([encode("y"), encode("x" * 120)], 10, CFG.max_seq_len, exact=True)


def test_top_p_keeps_the_smallest_nucleus():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 40)).astype(np.float32) * 2
    for top_p in (0.3, 0.75, 0.95):
        got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), 1.0, 0, top_p)))
        for row, kept in zip(logits, got):
            probs = np.exp(row - row.max())
            probs /= probs.sum()
            order = np.argsort(-probs)
            n = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)  # fewest ids reaching top_p
            assert set(np.flatnonzero(kept)) == set(order[:n].tolist())


def _batch(prompts):
    ids, seg, pos = left_pad(prompts, VOCAB.pad_id)
    return jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampler_obeys_the_block_grammar(model, temperature):
    rules = BlockRules.from_vocab(VOCAB, {"image": N_IMAGE})
    boi, eoi = VOCAB.markers("image")
    prompts = [np.array([1, 40, 41, boi]), np.array([1, 50, boi, VOCAB.offset("image") + 3]), np.array([1, 60, 61, 62])]
    block, filled = rules.state_after(prompts)
    out = np.asarray(generate_ids(*model, *_batch(prompts), jax.random.key(3), max_new_tokens=12, temperature=temperature, rules=rules,
                                  block_B=jnp.asarray(block), filled_B=jnp.asarray(filled)))
    lo, hi = VOCAB.offset("image"), VOCAB.offset("image") + 24
    for row, done in zip(out[:2], (0, 1)):
        codes = row[: N_IMAGE - done]
        assert ((codes >= lo) & (codes < hi)).all() and row[N_IMAGE - done] == eoi
    text_row = out[2]
    ended = np.flatnonzero(text_row == VOCAB.eos_id)
    if ended.size:
        assert (text_row[ended[0] + 1 :] == VOCAB.pad_id).all()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_guidance_one_equals_unguided(model, temperature):
    rules = BlockRules.from_vocab(VOCAB, {"image": N_IMAGE})
    boi = VOCAB.markers("image")[0]
    cond = [np.array([1, 70, 71, 72, boi]), np.array([1, 80, boi])]
    free = [np.array([1, boi])] * 2
    kwargs = dict(max_new_tokens=N_IMAGE + 1, temperature=temperature, rules=rules)
    state = [jnp.asarray(x) for x in rules.state_after(cond + free)]
    plain = generate_ids(*model, *_batch(cond + free), jax.random.key(1), **kwargs, block_B=state[0], filled_B=state[1])
    guided = generate_ids(*model, *_batch(cond + free), jax.random.key(1), **kwargs, block_B=state[0], filled_B=state[1], guidance=1.0)
    np.testing.assert_array_equal(np.asarray(guided)[:2], np.asarray(plain)[:2])
    strong = np.asarray(generate_ids(*model, *_batch(cond + free), jax.random.key(1), **kwargs, block_B=state[0], filled_B=state[1], guidance=4.0))
    np.testing.assert_array_equal(strong[:2], strong[2:])  # both rows of a pair carry the pair's token


def test_context_dropout_drops_only_context_text_before_a_trained_block():
    text, codes = np.arange(20, 25), VOCAB.to_global("image", np.arange(N_IMAGE))
    draw = assemble_document([("text", text, False), ("image", codes, True)], VOCAB)
    caption = assemble_document([("image", codes, False), ("text", text, True)], VOCAB)
    always = ContextDropout(0.999999, BEGIN_IDS)
    dropped = always(draw, np.random.default_rng(0))
    assert dropped["tokens"].tolist() == [VOCAB.bos_id, *draw["tokens"][1 + text.size :].tolist()]
    assert dropped["loss"].tolist() == [0, *draw["loss"][1 + text.size :].tolist()]
    assert always(caption, np.random.default_rng(0)) is caption
    never = ContextDropout(0.0, BEGIN_IDS)
    assert never(draw, np.random.default_rng(0)) is draw
    rate = np.mean([ContextDropout(0.3, BEGIN_IDS)(draw, np.random.default_rng(i)) is not draw for i in range(2000)])
    assert 0.26 < rate < 0.34


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_block_length_of_residual_codes_is_what_encode_gives(tmp_path):
    """A residual (rvq) audio tokenizer: one block holds every level of every frame, once."""
    from mmntp_jax.data.vocab import Vocab
    from mmntp_jax.generation.media import RunMedia
    from mmntp_jax.tokenizers.audio import AudioTokenizerConfig
    from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
    from mmntp_jax.tokenizers.io import save_tokenizer
    from mmntp_jax.tokenizers.registry import Tokenizer, build_module

    config = AudioTokenizerConfig(sample_rate=800, channels=4, strides=(2, 4), dilations=(1,),
                                  quantizer=QuantizerConfig(kind="rvq", codebook_size=16, dim=4, num_quantizers=3))
    module = build_module("audio", config, 0)
    tokenizer = Tokenizer("audio", config, module)
    save_tokenizer(tokenizer, tmp_path / "tokenizers" / "audio", tokenizer.params)
    vocab = Vocab.build(text=256, audio=16 * 3, levels={"audio": (3, "per_level")})
    media = RunMedia(tmp_path, vocab)
    ids = media.encode("audio", [np.sin(np.arange(800, dtype=np.float32) / 7)])[0]
    assert ids.size == 800 // 8 * 3 == 300 and media.block_length("audio") == ids.size
