"""The correspondence between the reference's torch state-dict keys and our parameter tree.

Each rule pairs a torch module prefix with a path in our tree and a kind
that says how its tensors are laid out in torch:
  linear        `weight` (out, in) -> Dense `kernel` (in, out); `bias`
  conv          `weight` (out, in, kh, kw) -> Conv `kernel` (kh, kw, in, out); `bias`
  conv_no_bias  the same without `bias`
  batchnorm     BatchNorm2d: `weight` -> `scale`, `bias`, and in the 'batch_stats'
                collection `running_mean` -> `mean`, `running_var` -> `var`;
                `num_batches_tracked` is ignored
  graph         `weight` already (in, out) -> `kernel`; `bias`
  attention     nn.MultiheadAttention with separate q/k/v weights: `q_proj_weight`,
                `k_proj_weight`, `v_proj_weight` (E, dim), `in_proj_bias` (3E), `out_proj.*`
This table is the only place that knows both namings; conversions in both
directions are derived from it.
"""

from schn_jax.models import resnet, vgg
from schn_jax.models.schn import CYCLE_WIRING

# Indices of the conv and fully connected layers in the torch-style `features` and
# `classifier` Sequentials of the backbones that have them.
BACKBONE_CONVS = {"alexnet": (0, 3, 6, 8, 10), "small_cnn": (0, 3), "vgg16": vgg.conv_indices()}
CLASSIFIER_FCS = {"alexnet": (1, 4), "small_cnn": (1, 4), "vgg16": vgg.CLASSIFIER_FCS}

# The ImageNet classifier of each torchvision checkpoint: present, never used.
TORCHVISION_HEADS = {
  "alexnet": "classifier.6.",
  "vgg16": "classifier.6.",
  **{name: "fc." for name in resnet.ARCHITECTURES},
}


def _resnet_rules(prefix, path, architecture):
  """torchvision ResNet's `conv1`, `bn1` and `layerS.I.{convN,bnN,downsample.0/1}`."""
  rules = [
    (f"{prefix}conv1", path + ("conv1",), "conv_no_bias"),
    (f"{prefix}bn1", path + ("bn1",), "batchnorm"),
  ]
  for block in resnet.blocks(architecture):
    torch_block = f"{prefix}{block.name.replace('_', '.')}"
    layers = [(f"conv{n}", f"bn{n}") for n in range(1, block.convolutions + 1)]
    if block.downsample:
      layers.append(("downsample_0", "downsample_1"))
    for conv, norm in layers:
      rules.append(
        (f"{torch_block}.{conv.replace('_', '.')}", path + (block.name, conv), "conv_no_bias")
      )
      rules.append(
        (f"{torch_block}.{norm.replace('_', '.')}", path + (block.name, norm), "batchnorm")
      )
  return rules


def backbone_rules(prefix, path, backbone="alexnet"):
  """The backbone's torchvision keys: AlexNet's and VGG-16's `features.N` /
  `classifier.N` (SmallCNN uses the same scheme), or a ResNet's."""
  if backbone in resnet.ARCHITECTURES:
    return _resnet_rules(prefix, path, backbone)
  return [
    (f"{prefix}features.{n}", path + (f"features_{n}",), "conv") for n in BACKBONE_CONVS[backbone]
  ] + [
    (f"{prefix}classifier.{n}", path + (f"classifier_{n}",), "linear")
    for n in CLASSIFIER_FCS[backbone]
  ]


def _mlp_with_hash(prefix, path, mlp="mlp", head="hash"):
  return [
    (f"{prefix}net.0", path + (mlp, "net_0"), "linear"),
    (f"{prefix}net.2", path + (mlp, "net_2"), "linear"),
    (f"{prefix}hash_layer.0", path + (head, "linear"), "linear"),
  ]


def schn_rules(variant, backbone="alexnet"):
  """Rules for the reference CycleHashNet state dict (`model_image.*`, `model_label.*`, `model_cycle.*`)."""
  if variant not in CYCLE_WIRING:
    raise ValueError(f"unknown variant {variant!r}; choose one of {tuple(CYCLE_WIRING)}")
  rules = backbone_rules("model_image.", ("visual", "backbone"), backbone)
  rules.append(("model_image.hash_layer.0", ("visual", "hash", "linear"), "linear"))
  rules += _mlp_with_hash("model_label.", ("semantic",))
  cycle = ("cycle",)
  for block in ("image_rec", "label_rec"):
    rules += _mlp_with_hash(f"model_cycle.model_{block}.", cycle + (block,))
    rules.append((f"model_cycle.self_attention_{block}", cycle + (block, "attention"), "attention"))
  # The two reference variants name the same graph convolution differently.
  graph = "gc" if variant == "mmasia" else "gc1"
  rules += [
    (f"model_cycle.gcn.{graph}", cycle + ("latent", "graph_conv"), "graph"),
    ("model_cycle.gcn.hash_code_layer", cycle + ("latent", "hash", "linear"), "linear"),
    ("model_cycle.self_attention_lat", cycle + ("latent", "attention"), "attention"),
  ]
  return rules


def discriminator_rules():
  """Rules for the reference ReconstructionDiscriminatorNetwork state dict."""
  rules = []
  for space in ("image", "label"):
    rules += _mlp_with_hash(f"model_{space}D.", (), mlp=f"{space}_mlp", head=f"{space}_head")
  return rules


# Reference module attribute for each group of the fixtures' manifest.
GROUP_PREFIX = {
  "image": "model_image.",
  "label": "model_label.",
  "cycle": "model_cycle.",
  "disc": "",
}
