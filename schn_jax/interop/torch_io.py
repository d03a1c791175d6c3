"""Reading and writing torch `.pth` / `.pt` state dicts. The only module that imports torch."""

import pathlib

import numpy as np

from schn_jax import errors


def _torch():
  try:
    import torch
  except ImportError as e:
    raise errors.MissingDependencyError(
      "reading or writing torch checkpoints needs PyTorch, an optional dependency: "
      "pip install torch==2.13.0 (CPU build)"
    ) from e
  return torch


def load_state_dict(path):
  """A torch state dict file -> {key: float32 numpy array}. Accepts a bare state dict
  or a dict holding one under 'state_dict' / 'model'."""
  torch = _torch()
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataNotFoundError(f"checkpoint file not found: {path}; check the path")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several types for a damaged file
    raise errors.DataError(f"{path} is not a readable torch checkpoint: {e}") from e
  for wrapper in ("state_dict", "model"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
  if not isinstance(obj, dict) or not all(hasattr(v, "detach") for v in obj.values()):
    raise errors.DataError(f"{path} does not hold a state dict (a mapping of names to tensors)")
  return {k: v.detach().cpu().float().numpy() for k, v in obj.items()}


def save_state_dict(state_dict, path):
  """{key: numpy array} -> a torch state dict file loadable with torch.load / load_state_dict."""
  torch = _torch()
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}, path)
