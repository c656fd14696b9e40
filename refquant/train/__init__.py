"""Training pieces written by hand (no autograd): straight-through and learned-range gradients of
fake quantization (ste), optimizers (optim)."""
