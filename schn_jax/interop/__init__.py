"""Weights in and out of schn-jax: torchvision backbone checkpoints (AlexNet, ResNet-18/34/50,
VGG-16), reference SCHN state dicts, and weight files (`weights`: .safetensors, .npz,
.pth). torch is imported only by `torch_io`, and only when a .pth file is read or
written."""

import jax

from schn_jax.interop import layout, weights
from schn_jax.interop.convert import (
  WeightImportError,
  params_to_state_dict,
  state_dict_to_params,
  state_dict_to_variables,
  variables_to_state_dict,
)


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


def backbone_from_torchvision(state_dict, template, backbone, source=None):
  """A torchvision state dict of `backbone` -> the backbone's variables, shaped like
  `template` ({'params': ..., 'batch_stats': ...}; 'batch_stats' empty or absent for
  backbones without BatchNorm). The ImageNet classifier (AlexNet's and VGG's
  `classifier.6`, a ResNet's `fc`) is ignored by design."""
  head = layout.TORCHVISION_HEADS.get(backbone)
  return state_dict_to_variables(
    state_dict,
    layout.backbone_rules("", (), backbone),
    _shapes(template),
    source or f"torchvision {backbone} state dict",
    allowed_extra=(head,) if head else (),
  )


def backbone_to_torchvision(variables, backbone):
  """The inverse: backbone variables -> a torchvision state dict without the classifier
  (torch's load_state_dict(strict=False) fills num_batches_tracked)."""
  return variables_to_state_dict(variables, layout.backbone_rules("", (), backbone))


def load_torchvision_backbone(path, template, backbone):
  """Read a torchvision state dict of `backbone` (e.g. `resnet50-*.pth`; also as
  .safetensors or .npz, which need no torch) into the backbone's variables shaped like
  `template`, as `backbone_from_torchvision`."""
  state_dict, _ = weights.read_arrays(path)
  return backbone_from_torchvision(state_dict, template, backbone, source=str(path))


__all__ = [
  "WeightImportError",
  "backbone_from_torchvision",
  "backbone_to_torchvision",
  "discriminator_from_reference",
  "discriminator_to_reference",
  "load_torchvision_backbone",
  "schn_from_reference",
  "schn_to_reference",
]
