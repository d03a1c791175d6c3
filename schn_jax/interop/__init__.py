"""Weights in and out of schn-jax: torchvision AlexNet checkpoints and reference SCHN
state dicts, and weight files (`weights`: .safetensors, .npz, .pth). torch is imported
only by `torch_io`, and only when a .pth file is read or written."""

import jax

from schn_jax.interop import layout, weights
from schn_jax.interop.convert import WeightImportError, params_to_state_dict, state_dict_to_params

# The ImageNet classifier of a torchvision AlexNet checkpoint: present, never used.
TORCHVISION_CLASSIFIER = ("classifier.6.",)


def _shapes(tree):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def schn_from_reference(
  state_dict, template, variant, source="reference state dict", backbone="alexnet"
):
  """Reference CycleHashNet state dict (`model_image.*`, `model_label.*`, `model_cycle.*`)
  -> SCHN parameters shaped like `template` (e.g. from `model.init` or `jax.eval_shape`)."""
  return state_dict_to_params(
    state_dict, layout.schn_rules(variant, backbone), _shapes(template), source
  )


def schn_to_reference(params, variant, backbone="alexnet"):
  return params_to_state_dict(params, layout.schn_rules(variant, backbone))


def discriminator_from_reference(state_dict, template, source="reference discriminator state dict"):
  return state_dict_to_params(state_dict, layout.discriminator_rules(), _shapes(template), source)


def discriminator_to_reference(params):
  return params_to_state_dict(params, layout.discriminator_rules())


def backbone_from_torchvision(state_dict, template, source="torchvision AlexNet state dict"):
  """A torchvision AlexNet state dict (`features.N.*`, `classifier.1/4/6.*`) -> backbone
  parameters. classifier.6 (the 1000-way ImageNet layer) is ignored by design."""
  return state_dict_to_params(
    state_dict,
    layout.backbone_rules("", ()),
    _shapes(template),
    source,
    allowed_extra=TORCHVISION_CLASSIFIER,
  )


def backbone_to_torchvision(params):
  return params_to_state_dict(params, layout.backbone_rules("", ()))


def load_torchvision_alexnet(path, template):
  """Read `alexnet-owt-*.pth` (or any torchvision AlexNet state dict, also as .safetensors
  or .npz, which need no torch) into backbone parameters."""
  state_dict, _ = weights.read_arrays(path)
  return backbone_from_torchvision(state_dict, template, source=str(path))


__all__ = [
  "WeightImportError",
  "backbone_from_torchvision",
  "backbone_to_torchvision",
  "discriminator_from_reference",
  "discriminator_to_reference",
  "load_torchvision_alexnet",
  "schn_from_reference",
  "schn_to_reference",
]
