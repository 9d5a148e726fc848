"""The decoder-only backbone: layers, attention, transformer, heads, generation, the FLOP count."""
