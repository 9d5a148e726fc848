"""Audio generation: text→audio and audio→text with a residual (rvq) audio tokenizer of random weights.

References: the tokenizer's own encode/decode, WAV files written and read with the `wave`
module, the per-level id ranges of the vocabulary, and data preparation's audio blocks.
"""

import json
import wave

import numpy as np
import pytest
from export_workdirs import TINY, random_workdir

from mmntp_jax import cli
from mmntp_jax.api import load
from mmntp_jax.config import ModelConfig
from mmntp_jax.data.prepare import PrepareOptions, prepare
from mmntp_jax.data.shards import ShardSet
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.generation.prompts import PromptError, encode_prompt
from mmntp_jax.generation.sample import generate
from mmntp_jax.tokenizers.audio import AudioTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.io import save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer

RATE, HOP, LEVELS, K = 800, 8, 3, 16
CONFIG = AudioTokenizerConfig(sample_rate=RATE, channels=4, strides=(2, 4), dilations=(1,),
                              quantizer=QuantizerConfig(kind="rvq", codebook_size=K, dim=4, num_quantizers=LEVELS))
CLIP = RATE // HOP * HOP  # one second in whole frames
BLOCK = CLIP // HOP * LEVELS


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory):
    """A workdir of random weights whose vocabulary is sized from the tokenizer object itself."""
    workdir = tmp_path_factory.mktemp("audio") / "wd"
    tokenizer = Tokenizer.create("audio", CONFIG, seed=0)
    save_tokenizer(tokenizer, workdir / "tokenizers" / "audio", tokenizer.params)
    vocab = Vocab.for_tokenizers(256, {"audio": tokenizer})
    random_workdir(workdir, ModelConfig(**{**TINY, "vocab_size": vocab.size, "max_seq_len": 512}), vocab=vocab)
    return load(workdir), tokenizer


def write_wav(path, samples_LC: np.ndarray, rate: int = RATE):
    """16-bit PCM with the `wave` module (an independent writer)."""
    pcm = np.clip(np.round(samples_LC * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return pcm


def read_wav(path):
    with wave.open(str(path), "rb") as w:
        frames = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), frames


def level_codes(vocab, ids):
    """Per-level local codes of a per-level block, [T, L], checking each id is in its level's range."""
    local = np.asarray(ids).reshape(-1, LEVELS) - vocab.offset("audio")
    lo = np.arange(LEVELS) * K
    assert ((local >= lo) & (local < lo + K)).all()
    return local - lo


def reference_decode(tokenizer, codes_TL):
    return np.asarray(tokenizer.decode(tokenizer.params, codes_TL.reshape(1, -1)))[0]


def test_rvq_levels_reach_the_vocabulary_and_data_preparation_writes_the_blocks_generation_reads(audio_run, tmp_path):
    run, tokenizer = audio_run
    assert (run.vocab.num_levels("audio"), run.vocab.layout("audio"), run.vocab.range_size("audio")) == (LEVELS, "per_level", LEVELS * K)
    write_wav(tmp_path / "a.wav", np.sin(np.arange(CLIP) / 5) * 0.8)
    (tmp_path / "m.jsonl").write_text(json.dumps({"segments": [{"type": "text", "text": "hi"}, {"type": "audio", "path": "a.wav"}]}) + "\n")
    prepare(tmp_path / "m.jsonl", tmp_path / "out", PrepareOptions(progress=False), encoders={"audio": (tokenizer, tokenizer.params)})
    shards = ShardSet(tmp_path / "out")
    assert shards.vocab == run.vocab
    tokens = np.asarray(next(iter(shards.documents()))["tokens"])
    boa, eoa = run.vocab.markers("audio")
    block = tokens[list(tokens).index(boa) + 1 : list(tokens).index(eoa)]
    assert block.size == BLOCK == run.media.block_length("audio")
    np.testing.assert_array_equal(block, run.media.encode("audio", [tmp_path / "a.wav"])[0])


def test_text_to_audio_fills_one_block_level_by_level_and_decodes_to_a_clip(audio_run):
    run, tokenizer = audio_run
    (result,) = generate(run, [[{"type": "text", "text": "hi"}, {"type": "audio"}]], temperature=1.0)
    ids = result["ids"]
    assert result["type"] == "audio" and ids.size == BLOCK + 1 and ids[-1] == run.vocab.markers("audio")[1]
    codes_TL = level_codes(run.vocab, ids[:-1])
    assert len(set(codes_TL.reshape(-1).tolist())) > 1  # sampled, not one id repeated
    assert result["audio"].shape == (CLIP,) and result["audio"].dtype == np.float32
    np.testing.assert_allclose(result["audio"], reference_decode(tokenizer, codes_TL), atol=1e-6)


def test_audio_prompt_is_mixed_cut_to_one_clip_and_encoded_as_the_tokenizer_does(audio_run, tmp_path):
    run, tokenizer = audio_run
    t = np.arange(CLIP * 3 // 2)
    pcm = write_wav(tmp_path / "long.wav", np.stack([np.sin(t / 7), 0.5 * np.cos(t / 3)], -1) * 0.9)
    clip = (pcm.astype(np.float64) / 32768).astype(np.float32).mean(-1)[:CLIP]
    np.testing.assert_allclose(run.media.fit("audio", tmp_path / "long.wav"), clip, atol=1e-7)
    segments = [{"type": "audio", "path": str(tmp_path / "long.wav")}, {"type": "text"}]
    prompt = encode_prompt(segments, run.vocab, run.tokenizer, run.media)
    boa, eoa = run.vocab.markers("audio")
    assert prompt.ids[:2].tolist() == [run.vocab.bos_id, boa] and prompt.ids[2 + BLOCK] == eoa and prompt.ids.size == BLOCK + 3
    codes_TL = level_codes(run.vocab, prompt.ids[2 : 2 + BLOCK])
    np.testing.assert_array_equal(codes_TL.reshape(-1), np.asarray(tokenizer.encode(tokenizer.params, clip[None]))[0])
    (result,) = generate(run, [segments], max_new_tokens=4)
    assert result["type"] == "text" and isinstance(result["text"], str)
    short = np.linspace(-1, 1, CLIP // 2, dtype=np.float32)
    np.testing.assert_array_equal(run.media.fit("audio", short), np.concatenate([short, np.zeros(CLIP - short.size, np.float32)]))


def test_mmntp_sample_writes_the_generated_clip_as_a_wav(audio_run, tmp_path, capsys):
    run, tokenizer = audio_run
    out = tmp_path / "samples"
    assert cli.main(["sample", "--workdir", str(run.workdir), "--prompt", "hi", "--generate", "audio", "--temperature", "1", "--out", str(out)]) == 0
    path = out / "audio_0000.wav"
    assert capsys.readouterr().out.split() == [str(path)]
    channels, width, rate, frames = read_wav(path)
    assert (channels, width, rate, frames.size) == (1, 2, RATE, CLIP)
    (record,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    expected = reference_decode(tokenizer, level_codes(run.vocab, record["ids"][:-1]))
    np.testing.assert_allclose(frames / 32768, expected, atol=1.5 / 32768)


@pytest.mark.parametrize("segment, words", [
    ({"type": "audio", "array": np.zeros((2, 3, CLIP))}, "an audio array of shape (2, 3, 800); expected [L] (mono)"),
    ({"type": "audio", "array": np.zeros((CLIP, 5))}, "an audio array of shape (800, 5)"),
    ({"type": "audio", "path": "missing.wav"}, "audio file missing.wav: not found"),
    ({"type": "video", "array": np.zeros((2, 8, 8, 3))}, "video prompts are not supported"),
    ({"type": "image", "array": np.zeros((8, 8, 3))}, "this run has no image tokenizer"),
])
def test_bad_audio_prompts_are_one_line_naming_the_segment(audio_run, segment, words):
    run, _ = audio_run
    with pytest.raises(PromptError) as err:
        run.generate([{"type": "text", "text": "x"}, segment, {"type": "text"}])
    message = str(err.value)
    assert message.startswith(f"prompt 0, segment 1 ({segment['type']})") and words in message and "\n" not in message


def test_wrong_rate_or_rank_from_the_command_line_is_one_line(audio_run, tmp_path, capsys):
    run, _ = audio_run
    write_wav(tmp_path / "fast.wav", np.zeros(100), rate=16000)
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, CLIP), np.float32))
    for name, words in (("fast.wav", "sample rate 16000 Hz, expected 800 Hz"), ("cube.npy", "expected [L] (mono)")):
        assert cli.main(["sample", "--workdir", str(run.workdir), "--audio", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err
