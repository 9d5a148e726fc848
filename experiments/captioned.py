"""The captioned-images job: one model that captions images and draws captions (the default job).

    mmntp train --workdir workdirs/default                       # the embedded captioned shapes
    mmntp train --config experiments/captioned.py --set data.manifest=TRAIN.jsonl \
        --set data.eval_manifest=HELDOUT.jsonl --workdir workdirs/mine   # your captioned images

Stages (each skipped when complete; Ctrl-C and the same command resume): an image
tokenizer (experiments/tokenizers/image_job.py: 32×32 → 64 FSQ codes of 1000)
trained in the workdir, `job.items` embedded shapes (or the user's manifest)
tokenized into shards, then the backbone. Vocab: 16 specials + 256 bytes + 1000
image codes = 1272 ids. Every image gives a captioning document (image as
context, caption trained on) and a drawing document (caption as context, image
codes trained on); 10% of drawing documents lose their caption
(`data.cfg_dropout`), so `mmntp sample --guidance S` has an unconditional model to
steer from. The mask is causal, so `mmntp export hf` gives the same model in
transformers; `--set model.attention_mask=block` lets context images attend
bidirectionally (export then refuses: transformers' Llama is causal).

Measured (quiet 2-core CPU, docs/benchmarks.md): 21 min 19 s in all
(tokenizer 175 s, data 8 s, backbone 971 s, evaluation 122 s); eval loss text
0.118 / image 3.97 nats; caption_accuracy 0.581, image_agreement 0.523,
classifier_accuracy 0.930 (targets 0.90 / 0.80 / 0.90 not yet met: the drawings
show the right background but no object yet).

Overrides small enough for a test: `--set job.tokenizer_steps=4 --set job.tokenizer_items=64
--set job.items=32 --set job.eval_items=8 --set train.steps=4`.
"""

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, JobConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="captioned",
        model=ModelConfig(vocab_size=16 + 256 + 1000, d_model=192, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=1024),
        data=DataConfig(source="shards", eval_fraction=0.02, pack_window=64, cfg_dropout=0.1),
        optim=OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=50, weight_decay=0.1),
        checkpoint=CheckpointConfig(every=200, keep=2),
        train=TrainConfig(steps=800, batch_size=8, seq_len=512, eval_every=400, eval_batches=4, log_every=10, cpu_devices=-1),
        job=JobConfig(kind="captioned", items=4000, eval_items=500),
    )
