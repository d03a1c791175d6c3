"""Move weights between torch state dicts (numpy arrays by key) and Flax parameter trees."""

import numpy as np
from flax import traverse_util

from schn_jax import errors


class WeightImportError(errors.UserError, ValueError):
  """A state dict that does not fit the model: names every offending key."""


# The torch tensors of each kind of rule (after the module prefix), and those a state dict
# may hold that the model has no use for.
_BATCHNORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
_IGNORED = {"batchnorm": ("num_batches_tracked",)}


def _torch_tensors(prefix, kind):
  """The torch keys of one rule and, for each, how to turn it into our leaves."""
  if kind == "attention":
    names = (
      "q_proj_weight",
      "k_proj_weight",
      "v_proj_weight",
      "in_proj_bias",
      "out_proj.weight",
      "out_proj.bias",
    )
  elif kind == "batchnorm":
    names = _BATCHNORM_TENSORS
  elif kind == "conv_no_bias":
    names = ("weight",)
  else:
    names = ("weight", "bias")
  return [f"{prefix}.{k}" for k in names]


def _ignored_tensors(prefix, kind):
  return [f"{prefix}.{k}" for k in _IGNORED.get(kind, ())]


def _to_flax(tensors, path, kind):
  """{torch key after the rule's prefix: array} -> {(collection,) + flat path: array};
  None marks a misfit."""
  t = tensors
  params, stats = ("params",) + path, ("batch_stats",) + path
  if kind == "attention":
    width = t["q_proj_weight"].shape[0]
    biases = (
      np.split(t["in_proj_bias"], 3) if t["in_proj_bias"].shape == (3 * width,) else [None] * 3
    )
    leaves = {}
    for name, bias in zip(("q_proj", "k_proj", "v_proj"), biases):
      leaves[params + (name, "kernel")] = t[f"{name}_weight"].T
      leaves[params + (name, "bias")] = bias
    leaves[params + ("out_proj", "kernel")] = t["out_proj.weight"].T
    leaves[params + ("out_proj", "bias")] = t["out_proj.bias"]
    return leaves
  if kind == "batchnorm":
    return {
      params + ("scale",): t["weight"],
      params + ("bias",): t["bias"],
      stats + ("mean",): t["running_mean"],
      stats + ("var",): t["running_var"],
    }
  weight = t["weight"]
  if kind in ("conv", "conv_no_bias"):
    kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else None
  elif kind == "linear":
    kernel = weight.T
  else:
    kernel = weight
  leaves = {params + ("kernel",): kernel}
  if "bias" in t:
    leaves[params + ("bias",)] = t["bias"]
  return leaves


def _to_torch(leaves, prefix, path, kind):
  """Inverse of `_to_flax` for one rule; `leaves` keyed as `_to_flax`'s."""
  get = lambda *p: np.asarray(leaves[("params",) + path + p])
  if kind == "attention":
    out = {f"{prefix}.{n}_weight": get(n, "kernel").T for n in ("q_proj", "k_proj", "v_proj")}
    out[f"{prefix}.in_proj_bias"] = np.concatenate(
      [get(n, "bias") for n in ("q_proj", "k_proj", "v_proj")]
    )
    out[f"{prefix}.out_proj.weight"] = get("out_proj", "kernel").T
    out[f"{prefix}.out_proj.bias"] = get("out_proj", "bias")
    return out
  if kind == "batchnorm":
    stat = lambda name: np.asarray(leaves[("batch_stats",) + path + (name,)])
    return {
      f"{prefix}.weight": get("scale"),
      f"{prefix}.bias": get("bias"),
      f"{prefix}.running_mean": stat("mean"),
      f"{prefix}.running_var": stat("var"),
    }
  kernel = get("kernel")
  weight = {
    "conv": lambda k: k.transpose(3, 2, 0, 1),
    "conv_no_bias": lambda k: k.transpose(3, 2, 0, 1),
    "linear": lambda k: k.T,
    "graph": lambda k: k,
  }[kind](kernel)
  if kind == "conv_no_bias":
    return {f"{prefix}.weight": weight}
  return {f"{prefix}.weight": weight, f"{prefix}.bias": get("bias")}


def state_dict_to_variables(state_dict, rules, template, source="state dict", allowed_extra=()):
  """Convert a torch-layout state dict to Flax variables ({'params': ..., 'batch_stats':
  ...}) shaped like `template`, which holds the collections the rules fill.

  Refuses (WeightImportError) missing, unexpected and misshapen keys, naming all
  of them. Keys starting with a prefix in `allowed_extra` are ignored, and so are
  BatchNorm's `num_batches_tracked`.
  """
  expected = {
    k: (prefix, path, kind) for prefix, path, kind in rules for k in _torch_tensors(prefix, kind)
  }
  ignored = tuple(allowed_extra) + tuple(
    k for prefix, _, kind in rules for k in _ignored_tensors(prefix, kind)
  )
  present = set(state_dict)
  missing = sorted(set(expected) - present)
  unexpected = sorted(k for k in present - set(expected) if not k.startswith(ignored))
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
    problems.append(f"model variables with no source key: {', '.join(uncovered)}")
  if problems:
    raise WeightImportError(
      f"{source} does not fit the model: "
      + "; ".join(problems)
      + ". Check that the file, variant, backbone, code length and label count "
      "match the configuration."
    )
  variables = traverse_util.unflatten_dict(flat)
  return {collection: variables.get(collection, {}) for collection in template}


def state_dict_to_params(state_dict, rules, template, source="state dict", allowed_extra=()):
  """`state_dict_to_variables` for rules without BatchNorm: a parameter tree."""
  return state_dict_to_variables(state_dict, rules, {"params": template}, source, allowed_extra)[
    "params"
  ]


def variables_to_state_dict(variables, rules):
  """Flax variables ({'params': ..., 'batch_stats': ...}) -> torch-layout state dict
  (numpy arrays), keyed as the rules say."""
  leaves = traverse_util.flatten_dict(variables)
  out = {}
  for prefix, path, kind in rules:
    out.update(_to_torch(leaves, prefix, path, kind))
  return out


def params_to_state_dict(params, rules):
  """Our parameter tree -> torch-layout state dict, for rules without BatchNorm."""
  return variables_to_state_dict({"params": params}, rules)
