"""The notebook API: `mm.load(workdir)` → `Run` with `logits` and `generate`."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from mmntp_jax.config import Config, load_json
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.model.generate import generate_ids, left_pad
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

    def generate(self, prompt: str | list[str], max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, seed: int = 0):
        """Continues text prompt(s); returns the new text (a list for a list of prompts)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        encoded = [np.concatenate([[self.vocab.bos_id], self.tokenizer.encode(p)]) for p in prompts]
        ids, seg, pos = left_pad(encoded, self.vocab.pad_id)
        new = generate_ids(
            self.graph, self.params, jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(pos), jax.random.key(seed),
            max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
        )
        texts = [self.tokenizer.decode(_until_eos(row, self.vocab.eos_id)) for row in np.asarray(new)]
        return texts[0] if isinstance(prompt, str) else texts


def _until_eos(row: np.ndarray, eos_id: int) -> np.ndarray:
    hits = np.flatnonzero(row == eos_id)
    return row[: hits[0]] if hits.size else row


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
