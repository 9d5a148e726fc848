"""Tiny random transformers models saved as Hugging Face folders (needs the [hf] extra)."""

import torch
import transformers

V_HF = 300


def make_hf_model(folder, family: str):
    """A tiny random transformers model (norms perturbed) saved as safetensors, with a BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    common = dict(vocab_size=V_HF, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rope_theta=500.0, rms_norm_eps=1e-5)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, bos_token_id=5, eos_token_id=6, tie_word_embeddings=False))
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(folder)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["hello world, def foo(bar): return bar"] * 20, trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    return model.eval(), tokenizer
