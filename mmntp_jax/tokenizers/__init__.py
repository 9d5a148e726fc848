"""Modality tokenizers (image, audio, video, continuous) and the text tokenizer."""
