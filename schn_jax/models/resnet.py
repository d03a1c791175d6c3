"""torchvision's ResNets (v1.5: a bottleneck's stride on its 3x3 convolution) as backbones of
the visual space: image -> the 512- or 2048-d globally average-pooled feature.

Submodule names mirror torchvision's state-dict keys (`conv1`, `bn1`,
`layer2_0/conv1` <-> `layer2.0.conv1`, `layer2_0/downsample_0` <->
`layer2.0.downsample.0`); `interop/layout.py` reads `blocks` to pair them. The
ImageNet classifier (`fc`) is not part of the backbone. Initialisation is
torchvision's: convolutions he-normal over fan-out, BatchNorm scale 1 and bias 0.
"""

from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from schn_jax.models.layers import BatchNorm, conv, he_normal_fan_out, max_pool

# Bottleneck blocks?, and blocks per stage.
ARCHITECTURES = {
  "resnet18": (False, (2, 2, 2, 2)),
  "resnet34": (False, (3, 4, 6, 3)),
  "resnet50": (True, (3, 4, 6, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4


class Block(NamedTuple):
  """One residual block: its name (`layer{stage}_{index}`), width, stride, whether it
  is a bottleneck (three convolutions) and whether its shortcut is projected."""

  name: str
  width: int
  stride: int
  bottleneck: bool
  downsample: bool

  @property
  def convolutions(self):
    return 3 if self.bottleneck else 2


def blocks(architecture):
  """The residual blocks of `architecture` in torchvision's order."""
  bottleneck, depths = ARCHITECTURES[architecture]
  expansion = BOTTLENECK_EXPANSION if bottleneck else 1
  channels, out = STAGE_WIDTHS[0], []
  for stage, (width, depth) in enumerate(zip(STAGE_WIDTHS, depths)):
    for index in range(depth):
      stride = 2 if stage > 0 and index == 0 else 1
      downsample = index == 0 and (stride != 1 or channels != width * expansion)
      out.append(Block(f"layer{stage + 1}_{index}", width, stride, bottleneck, downsample))
      channels = width * expansion
  return out


def _conv_bn(x, features, kernel, stride, padding, conv_name, bn_name, batch_sum):
  x = conv(
    x,
    features,
    kernel,
    stride,
    padding,
    conv_name,
    kernel_init=he_normal_fan_out,
    use_bias=False,
  )
  return BatchNorm(name=bn_name)(x, batch_sum)


class ResidualBlock(nn.Module):
  """torchvision's BasicBlock (3x3, 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to
  4x the width), each convolution followed by BatchNorm; ReLU after the sum."""

  block: Block

  @nn.compact
  def __call__(self, x, batch_sum=None):
    b = self.block
    if b.bottleneck:
      shapes = [(b.width, 1, 1, 0), (b.width, 3, b.stride, 1)]
      shapes.append((b.width * BOTTLENECK_EXPANSION, 1, 1, 0))
    else:
      shapes = [(b.width, 3, b.stride, 1), (b.width, 3, 1, 1)]
    y = x
    for n, (features, kernel, stride, padding) in enumerate(shapes, 1):
      y = _conv_bn(y, features, kernel, stride, padding, f"conv{n}", f"bn{n}", batch_sum)
      if n < len(shapes):
        y = nn.relu(y)
    shortcut = x
    if b.downsample:
      shortcut = _conv_bn(x, y.shape[-1], 1, b.stride, 0, "downsample_0", "downsample_1", batch_sum)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """torchvision's ResNet `architecture` up to its global average pool.

  `dropout_rate` is not used (torchvision's ResNets have no dropout); every backbone
  takes it so that `VisualNet` builds them alike. `batch_sum`: see `layers.BatchNorm`.
  """

  architecture: str
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0, batch_sum=None):
    del train, first_row  # no dropout
    x = nn.relu(_conv_bn(images, STAGE_WIDTHS[0], 7, 2, 3, "conv1", "bn1", batch_sum))
    x = max_pool(x, 3, 2, padding=1)
    for block in blocks(self.architecture):
      x = ResidualBlock(block, name=block.name)(x, batch_sum)
    return jnp.mean(x, axis=(1, 2))
