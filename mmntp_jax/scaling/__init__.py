"""Scaling laws: FLOP accounting, sweeps, fits, plots."""
