"""The notebook API: `mm.load(workdir)` → `Run` with `logits` and `generate`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from etils import epath

from mmntp_jax.config import Config, load_json
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.generation.media import RunMedia
from mmntp_jax.model.heads import logits as head_logits
from mmntp_jax.model.init import bind, graphdef, init_params
from mmntp_jax.paths import resolve_path
from mmntp_jax.tokenizers.text import ByteTokenizer
from mmntp_jax.train.checkpoint import Checkpointer


@dataclass
class Run:
    """A trained model: resolved config, vocabulary, parameters and text tokenizer."""

    workdir: epath.Path
    config: Config
    vocab: Vocab
    params: dict
    step: int
    tokenizer: ByteTokenizer  # or HFTextTokenizer when the workdir has tokenizers/text/tokenizer.json

    @property
    def graph(self):
        return graphdef(self.config.model)

    def logits(self, ids, positions=None, segment_ids=None) -> jax.Array:
        """ids int [B, T] → float32 logits [B, T, V]."""
        ids = jnp.asarray(ids, jnp.int32)
        if ids.ndim != 2:
            raise ValueError(f"ids must be [B, T], got shape {ids.shape}")
        model = bind(self.graph, self.params)
        return head_logits(model(ids, positions, segment_ids), model.head_kernel())

    @functools.cached_property
    def media(self) -> RunMedia:
        """The run's modality tokenizers (WORKDIR/tokenizers/<modality>/)."""
        return RunMedia(self.workdir, self.vocab)

    def generate(self, prompt, max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int = 0, guidance: float = 1.0, batch_size: int = 16):
        """Continues prompts (see `generation.prompts`):

        - a string → the new text; a list of strings → a list of texts;
        - a list of segments (one prompt) → the list of generated segments, e.g.
          `[{"type": "image", "image": [H, W, 3] array, "ids": …}]`;
        - a list of such lists (a batch) → a list of those lists.
        """
        from mmntp_jax.generation.sample import generate

        if isinstance(prompt, str) or (prompt and all(isinstance(p, str) for p in prompt)):
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            out = generate(self, texts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           seed=seed, guidance=guidance, batch_size=batch_size)
            return out[0]["text"] if isinstance(prompt, str) else [r["text"] for r in out]
        batch = isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, (list, tuple)) for p in prompt)
        prompts = list(prompt) if batch else [prompt]
        out = generate(self, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       seed=seed, guidance=guidance, batch_size=batch_size)
        return [[r] for r in out] if batch else [out[0]]


def load(workdir, step: int | None = None) -> Run:
    """Loads config.json, vocab.json and the parameters of checkpoint `step` (latest if None)."""
    workdir = epath.Path(resolve_path(workdir))
    if not (workdir / "config.json").exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: config.json is missing")
    config = load_json(workdir / "config.json")
    vocab = Vocab.load(workdir / "vocab.json")
    abstract = jax.eval_shape(lambda: init_params(config.model, jax.random.key(0)))
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        params, step = checkpointer.restore_params(step, abstract)
    finally:
        checkpointer.close()
    from mmntp_jax.export.text_tokenizer import workdir_text_tokenizer

    return Run(workdir, config, vocab, params, step, workdir_text_tokenizer(workdir, vocab))
