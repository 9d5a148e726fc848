"""Export to Hugging Face safetensors and StableHLO; import from Hugging Face."""
