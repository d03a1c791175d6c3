"""Visual space: image -> feature F_image, and its hash head.

Backbones (`BACKBONES`, chosen by config.backbone): torchvision's AlexNet (here),
ResNet-18/34/50 (`resnet.py`) and VGG-16 (`vgg.py`) with torchvision's layouts,
and a small CNN for small images. Each is called as
`backbone(images, train, first_row, batch_sum)`; `batch_sum` is for BatchNorm
(`layers.BatchNorm`) and ignored by backbones without it.
"""

import functools

import flax.linen as nn

from schn_jax.models.layers import (
  HashHead,
  RowDropout,
  adaptive_avg_pool,
  conv,
  flatten_like_torch,
  linear,
  max_pool,
)
from schn_jax.models.resnet import ARCHITECTURES, ResNet
from schn_jax.models.vgg import VGG16


def _classifier(x, feature_dim, dropout_rate, train, first_row):
  """torchvision AlexNet's classifier up to fc7: (dropout, fc, ReLU) twice. Called inside a
  backbone's compact __call__, so the layers are that backbone's `classifier_1`/`_4`."""
  for name in ("classifier_1", "classifier_4"):
    x = RowDropout(dropout_rate)(x, train, first_row)
    x = nn.relu(linear(x, feature_dim, name))
  return x


class AlexNet(nn.Module):
  """torchvision AlexNet up to fc7 (ReLU). Submodule names mirror torchvision's
  state-dict keys: `features_N` <-> `features.N`, `classifier_N` <-> `classifier.N`."""

  dropout_rate: float = 0.5
  feature_dim: int = 4096

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0, batch_sum=None):
    del batch_sum  # no BatchNorm
    x = images
    for name, feats, k, s, p, pool in [
      ("features_0", 64, 11, 4, 2, True),
      ("features_3", 192, 5, 1, 2, True),
      ("features_6", 384, 3, 1, 1, False),
      ("features_8", 256, 3, 1, 1, False),
      ("features_10", 256, 3, 1, 1, True),
    ]:
      x = nn.relu(conv(x, feats, k, s, p, name))
      if pool:
        x = max_pool(x, 3, 2)
    self.sow("intermediates", "conv_features", x)
    x = flatten_like_torch(adaptive_avg_pool(x, 6))
    return _classifier(x, self.feature_dim, self.dropout_rate, train, first_row)


class SmallCNN(nn.Module):
  """A small CNN for 28x28 / 32x32 images (the offline default), same shape as
  AlexNet's head: conv features, then two dropout+fc+ReLU layers."""

  dropout_rate: float = 0.5
  feature_dim: int = 512

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0, batch_sum=None):
    del batch_sum  # no BatchNorm
    x = images
    for name, feats in [("features_0", 32), ("features_3", 64)]:
      x = nn.relu(conv(x, feats, 3, 1, 1, name))
      x = max_pool(x, 2, 2)
    return _classifier(flatten_like_torch(x), self.feature_dim, self.dropout_rate, train, first_row)


BACKBONES = {
  "alexnet": AlexNet,
  "small_cnn": SmallCNN,
  **{name: functools.partial(ResNet, name) for name in ARCHITECTURES},
  "vgg16": VGG16,
}

# How BatchNorm layers normalise while training: "train" with the global batch's
# statistics, updating the running ones (torch's training mode); "frozen" with the
# running statistics, never updated (torch's eval mode). Outside training both use
# the running statistics.
BATCHNORM_MODES = ("train", "frozen")


def input_channels(backbone_params):
  """The channels of the images a backbone's parameters (or their shapes) take."""
  first = "conv1" if "conv1" in backbone_params else "features_0"
  return backbone_params[first]["kernel"].shape[2]


class VisualNet(nn.Module):
  """Image -> (F_image, U_image): a backbone and a tanh hash head.

  `device_sum` sums a per-device value over the devices holding the global batch
  (None: one device); BatchNorm layers use it for the global batch's statistics.
  """

  bits: int
  backbone: str = "alexnet"
  dropout_rate: float = 0.5
  batchnorm: str = "train"

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0, device_sum=None):
    if self.backbone not in BACKBONES:
      raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
    if self.batchnorm not in BATCHNORM_MODES:
      raise ValueError(f"unknown batchnorm {self.batchnorm!r}; choose one of {BATCHNORM_MODES}")
    batch_sum = None
    if train and self.batchnorm == "train":
      batch_sum = device_sum or (lambda x: x)
    features = BACKBONES[self.backbone](self.dropout_rate, name="backbone")(
      images, train, first_row, batch_sum
    )
    return features, HashHead(self.bits, name="hash")(features)
