"""BERT, GPT-2 and Llama families from real checkpoints: ``rq.load(path)``."""
from __future__ import annotations

from pathlib import Path

import weights_io
from weights_io.errors import ConfigError

from .base import Model, load_tokenizer
from .bert import Bert, mean_pool
from .gpt2 import GPT2
from .llama import Llama

FAMILIES = {"bert": Bert, "gpt2": GPT2, "llama": Llama}


def load(path, config=None, stream: bool = False) -> Model:
    """A float32 model from a checkpoint directory (config.json + model.safetensors, or shards
    with model.safetensors.index.json) or one .safetensors file (config.json beside it, or
    ``config`` given as a dict / path). Weights stay memory-mapped until used; tokenizer.json
    beside the weights gives ``model.encode``. ``stream=True`` keeps no weight between uses (each
    is mapped when a site needs it and released after), for checkpoints larger than memory."""
    ckpt = weights_io.open_checkpoint(path)
    if config is None:
        if ckpt.config_path is None:
            raise ConfigError(f"{path}: no config.json beside the weights; pass config=")
        config = ckpt.config_path
    cfg = weights_io.load_config(config)
    weights = weights_io.load_weights(ckpt, cfg.model_type)
    directory = Path(ckpt.config_path).parent if ckpt.config_path else (
        Path(path) if Path(path).is_dir() else Path(path).parent)
    return FAMILIES[cfg.model_type](cfg, weights, load_tokenizer(directory), source=str(path), stream=stream)


__all__ = ["load", "Model", "Bert", "GPT2", "Llama", "mean_pool", "FAMILIES"]
