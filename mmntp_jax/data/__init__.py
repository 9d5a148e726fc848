"""Multimodal data: schema, vocabulary, preparation, packing, pipeline."""
