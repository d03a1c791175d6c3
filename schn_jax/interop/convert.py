"""Move weights between torch state dicts (numpy arrays by key) and Flax parameter trees."""

import numpy as np
from flax import traverse_util

from schn_jax import errors


class WeightImportError(errors.UserError, ValueError):
  """A state dict that does not fit the model: names every offending key."""


def _torch_tensors(prefix, kind):
  """The torch keys of one rule and, for each, how to turn it into our leaves."""
  if kind == "attention":
    return [
      f"{prefix}.{k}"
      for k in (
        "q_proj_weight",
        "k_proj_weight",
        "v_proj_weight",
        "in_proj_bias",
        "out_proj.weight",
        "out_proj.bias",
      )
    ]
  return [f"{prefix}.weight", f"{prefix}.bias"]


def _to_flax(tensors, path, kind):
  """{torch key after the rule's prefix: array} -> {flat path: array}; None marks a misfit."""
  t = tensors
  if kind == "attention":
    width = t["q_proj_weight"].shape[0]
    biases = (
      np.split(t["in_proj_bias"], 3) if t["in_proj_bias"].shape == (3 * width,) else [None] * 3
    )
    leaves = {}
    for name, bias in zip(("q_proj", "k_proj", "v_proj"), biases):
      leaves[path + (name, "kernel")] = t[f"{name}_weight"].T
      leaves[path + (name, "bias")] = bias
    leaves[path + ("out_proj", "kernel")] = t["out_proj.weight"].T
    leaves[path + ("out_proj", "bias")] = t["out_proj.bias"]
    return leaves
  weight = t["weight"]
  if kind == "conv":
    kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else None
  elif kind == "linear":
    kernel = weight.T
  else:
    kernel = weight
  return {path + ("kernel",): kernel, path + ("bias",): t["bias"]}


def _to_torch(leaves, prefix, path, kind):
  """Inverse of `_to_flax` for one rule."""
  get = lambda *p: np.asarray(leaves[path + p])
  if kind == "attention":
    out = {f"{prefix}.{n}_weight": get(n, "kernel").T for n in ("q_proj", "k_proj", "v_proj")}
    out[f"{prefix}.in_proj_bias"] = np.concatenate(
      [get(n, "bias") for n in ("q_proj", "k_proj", "v_proj")]
    )
    out[f"{prefix}.out_proj.weight"] = get("out_proj", "kernel").T
    out[f"{prefix}.out_proj.bias"] = get("out_proj", "bias")
    return out
  kernel = get("kernel")
  weight = {
    "conv": lambda k: k.transpose(3, 2, 0, 1),
    "linear": lambda k: k.T,
    "graph": lambda k: k,
  }[kind](kernel)
  return {f"{prefix}.weight": weight, f"{prefix}.bias": get("bias")}


def state_dict_to_params(state_dict, rules, template, source="state dict", allowed_extra=()):
  """Convert a torch-layout state dict to a Flax parameter tree shaped like `template`.

  Refuses (WeightImportError) missing, unexpected and misshapen keys, naming all
  of them. Keys starting with a prefix in `allowed_extra` are ignored.
  """
  expected = {
    k: (prefix, path, kind) for prefix, path, kind in rules for k in _torch_tensors(prefix, kind)
  }
  present = set(state_dict)
  missing = sorted(set(expected) - present)
  unexpected = sorted(k for k in present - set(expected) if not k.startswith(tuple(allowed_extra)))
  flat_template = traverse_util.flatten_dict(template)
  flat, misshapen = {}, []
  for prefix, path, kind in rules:
    keys = _torch_tensors(prefix, kind)
    if any(k not in state_dict for k in keys):
      continue
    converted = _to_flax(
      {k[len(prefix) + 1 :]: np.asarray(state_dict[k]) for k in keys}, path, kind
    )
    for leaf_path, value in converted.items():
      want = tuple(flat_template[leaf_path].shape) if leaf_path in flat_template else None
      if value is None or want is None or tuple(value.shape) != want:
        misshapen += [f"{k} {tuple(np.shape(state_dict[k]))}" for k in keys]
        break
      flat[leaf_path] = value.astype(flat_template[leaf_path].dtype)
  misshapen = sorted(set(misshapen))
  uncovered = sorted(
    "/".join(p) for p in set(flat_template) - set(flat) if not (missing or misshapen)
  )
  problems = []
  if missing:
    problems.append(f"missing keys: {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {', '.join(unexpected)}")
  if misshapen:
    problems.append(
      "keys whose shape does not fit the model (shape given): " + ", ".join(misshapen)
    )
  if uncovered:
    problems.append(f"model parameters with no source key: {', '.join(uncovered)}")
  if problems:
    raise WeightImportError(
      f"{source} does not fit the model: "
      + "; ".join(problems)
      + ". Check that the file, variant, code length and label count "
      "match the configuration."
    )
  return traverse_util.unflatten_dict(flat)


def params_to_state_dict(params, rules):
  """Our parameter tree -> torch-layout state dict (numpy arrays), keyed as the rules say."""
  leaves = traverse_util.flatten_dict(params)
  out = {}
  for prefix, path, kind in rules:
    out.update(_to_torch(leaves, prefix, path, kind))
  return out
