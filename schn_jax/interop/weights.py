"""Weight files by suffix: .safetensors and .npz without torch; .pth / .pt through torch_io.

A weight file is a flat mapping of names to arrays plus optional string
metadata. Flax parameter trees are stored with '/'-joined paths as names
(`visual/backbone/features_0/kernel`), in Flax layout; torch state dicts
(torchvision AlexNet, the reference's SCHN) keep their own keys and layout,
and `interop.backbone_from_torchvision` / `schn_from_reference` convert them.
So a torchvision AlexNet saved once as .safetensors starts training without
torch, and a trained model is shared as one .safetensors file.
"""

import json
import pathlib
import zipfile

import numpy as np
import safetensors
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from schn_jax import errors, files
from schn_jax.interop import torch_io

SUFFIXES = (".safetensors", ".npz", ".pth", ".pt")
# .npz has no header for metadata; it is kept as a JSON string under this name.
_NPZ_METADATA = "__metadata__"


class WeightFileError(errors.UserError, ValueError):
  """A weight file that is missing, unreadable or of an unknown kind."""


def _suffix(path):
  suffix = pathlib.Path(path).suffix
  if suffix not in SUFFIXES:
    raise WeightFileError(
      f"{path}: unknown weight file type {suffix!r}; use one of {', '.join(SUFFIXES)}."
    )
  return suffix


def read_arrays(path):
  """(arrays {name: np.ndarray}, metadata {str: str}) from a weight file."""
  suffix = _suffix(path)
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.DataNotFoundError(f"{path}: no such weight file; check the path.")
  if suffix in (".pth", ".pt"):
    return torch_io.load_state_dict(path), {}
  if suffix == ".npz":
    if not zipfile.is_zipfile(path):
      raise WeightFileError(f"{path}: not an .npz file (not a zip archive).")
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
    metadata = json.loads(str(arrays.pop(_NPZ_METADATA, "{}")))
    return arrays, metadata
  try:
    with safetensors.safe_open(str(path), framework="np") as f:
      metadata = dict(f.metadata() or {})
    return safetensors_numpy.load_file(str(path)), metadata
  except safetensors.SafetensorError as error:
    raise WeightFileError(f"{path}: not a readable .safetensors file ({error}).") from None


def write_arrays(arrays, path, metadata=None):
  """Writes {name: array} (and string metadata) in the format of `path`'s suffix."""
  suffix = _suffix(path)
  arrays = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
  metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
  with files.replaced(path) as tmp:
    if suffix in (".pth", ".pt"):
      torch_io.save_state_dict(arrays, tmp)
    elif suffix == ".npz":
      np.savez(tmp, **arrays, **{_NPZ_METADATA: json.dumps(metadata)})
    else:
      safetensors_numpy.save_file(arrays, str(tmp), metadata=metadata)


def params_to_arrays(params):
  """A Flax parameter tree -> {'a/b/kernel': np.ndarray}."""
  return {
    name: np.asarray(value) for name, value in traverse_util.flatten_dict(params, sep="/").items()
  }


def arrays_to_params(arrays, template, source="weights"):
  """{'a/b/kernel': array} -> a tree shaped like `template` (arrays or shape
  structs), cast to its dtypes; refuses missing, unexpected and misshapen
  names, all of them named."""
  expected = traverse_util.flatten_dict(template, sep="/")
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  misshapen = sorted(
    f"{name} {tuple(np.shape(arrays[name]))} (expected {tuple(expected[name].shape)})"
    for name in expected
    if name in arrays and tuple(np.shape(arrays[name])) != tuple(expected[name].shape)
  )
  problems = [
    f"{what}: {', '.join(names)}"
    for what, names in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
    if names
  ]
  if problems:
    raise WeightFileError(
      f"{source} does not fit the model: " + "; ".join(problems) + ". Check that the file was "
      "written for this variant, backbone and code length."
    )
  return traverse_util.unflatten_dict(
    {name: np.asarray(arrays[name], expected[name].dtype) for name in expected}, sep="/"
  )


def save_params(params, path, metadata=None):
  """A Flax parameter tree (any part of it: backbone, visual net, whole SCHN)."""
  write_arrays(params_to_arrays(params), path, metadata)


def load_params(path, template):
  """(parameter tree shaped like `template`, metadata) from a weight file."""
  arrays, metadata = read_arrays(path)
  return arrays_to_params(arrays, template, str(path)), metadata
