"""Pure-JAX quantizers: vq, rvq, group_vq, fsq, lfq, bsq, msvq."""
