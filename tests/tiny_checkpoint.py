"""A tiny DETR checkpoint in the official PyTorch layout, for CLI tests."""

from detr_jax.convert.recipe import recipe_state_for_config
from detr_jax.models.config import tiny_model_config


def write_tiny_pth(path) -> str:
    """Write recipe weights of the tiny config (8 heads) as an official ``.pth`` file."""
    import torch
    state = recipe_state_for_config(tiny_model_config(num_heads=8))
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state.items()}}, path)
    return str(path)
