"""Scaling laws: sweeps, fits, plots (FLOPs from the model's count, `mmntp_jax/model/flops.py`)."""
