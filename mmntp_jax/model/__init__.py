"""The decoder-only backbone: layers, attention, transformer, heads, generation."""
