"""Visual space: image -> feature F_image, and its hash head."""

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from schn_jax.models.layers import HashHead, RowDropout, conv, linear


def adaptive_avg_pool(x, size: int):
  """torch.nn.AdaptiveAvgPool2d(size) for NHWC input (bins floor(i*H/s)..ceil((i+1)*H/s))."""

  def bins(n):
    m = np.zeros((size, n))
    for i in range(size):
      lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return jnp.asarray(m, x.dtype)

  return jnp.einsum("ih,jw,bhwc->bijc", bins(x.shape[1]), bins(x.shape[2]), x)


def max_pool(x, window: int, stride: int):
  """VALID max pooling of NHWC maps as an elementwise max over strided slices.

  Same values as nn.max_pool; on XLA:CPU its gradient (a select per slice) is
  several times faster than the select-and-scatter of reduce_window.
  """
  height = (x.shape[1] - window) // stride + 1
  width = (x.shape[2] - window) // stride + 1
  slices = [
    x[:, i : i + stride * (height - 1) + 1 : stride, j : j + stride * (width - 1) + 1 : stride]
    for i in range(window)
    for j in range(window)
  ]
  return functools.reduce(jnp.maximum, slices)


def _classifier(x, feature_dim, dropout_rate, train, first_row):
  """torchvision AlexNet's classifier up to fc7: (dropout, fc, ReLU) twice. Called inside a
  backbone's compact __call__, so the layers are that backbone's `classifier_1`/`_4`."""
  for name in ("classifier_1", "classifier_4"):
    x = RowDropout(dropout_rate)(x, train, first_row)
    x = nn.relu(linear(x, feature_dim, name))
  return x


def _flatten_like_torch(x):
  # torch flattens NCHW feature maps channel-major; doing the same keeps fc6
  # weights interchangeable with torchvision checkpoints.
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class AlexNet(nn.Module):
  """torchvision AlexNet up to fc7 (ReLU). Submodule names mirror torchvision's
  state-dict keys: `features_N` <-> `features.N`, `classifier_N` <-> `classifier.N`."""

  dropout_rate: float = 0.5
  feature_dim: int = 4096

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0):
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
    x = _flatten_like_torch(adaptive_avg_pool(x, 6))
    return _classifier(x, self.feature_dim, self.dropout_rate, train, first_row)


class SmallCNN(nn.Module):
  """A small CNN for 28x28 / 32x32 images (the offline default), same shape as
  AlexNet's head: conv features, then two dropout+fc+ReLU layers."""

  dropout_rate: float = 0.5
  feature_dim: int = 512

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0):
    x = images
    for name, feats in [("features_0", 32), ("features_3", 64)]:
      x = nn.relu(conv(x, feats, 3, 1, 1, name))
      x = max_pool(x, 2, 2)
    return _classifier(
      _flatten_like_torch(x), self.feature_dim, self.dropout_rate, train, first_row
    )


BACKBONES = {"alexnet": AlexNet, "small_cnn": SmallCNN}


class VisualNet(nn.Module):
  """Image -> (F_image, U_image): a backbone and a tanh hash head."""

  bits: int
  backbone: str = "alexnet"
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0):
    if self.backbone not in BACKBONES:
      raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(BACKBONES)}")
    features = BACKBONES[self.backbone](self.dropout_rate, name="backbone")(
      images, train, first_row
    )
    return features, HashHead(self.bits, name="hash")(features)
