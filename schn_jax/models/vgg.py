"""torchvision's VGG-16 (no BatchNorm) as a backbone of the visual space: image -> fc7
after its ReLU (4096-d), the input of the hash head, as AlexNet's.

Submodule names mirror torchvision's state-dict keys (`features_N` <->
`features.N`, `classifier_0` / `classifier_3` <-> fc6 / fc7). torchvision's
classifier is fc6, ReLU, dropout, fc7, ReLU, dropout, fc8: the feature stops at
fc7's ReLU, so one dropout (before fc7) acts in training, where AlexNet's head
has one before each fc layer. Initialisation is torchvision's: convolutions
he-normal over fan-out, linear layers N(0, 0.01^2), biases 0.
"""

import flax.linen as nn

from schn_jax.models.layers import (
  RowDropout,
  adaptive_avg_pool,
  conv,
  flatten_like_torch,
  he_normal_fan_out,
  linear,
  max_pool,
  normal,
)

# Output channels of the 3x3 convolutions, stage by stage; 2x2 max pooling after each stage.
STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
CLASSIFIER_FCS = (0, 3)


def conv_indices():
  """Each convolution's index in torchvision's `features` Sequential (a ReLU follows each
  convolution, a max pool each stage)."""
  indices, position = [], 0
  for stage in STAGES:
    for _ in stage:
      indices.append(position)
      position += 2
    position += 1
  return tuple(indices)


class VGG16(nn.Module):
  """torchvision VGG-16 up to fc7 (ReLU). `batch_sum` is not used (no BatchNorm)."""

  dropout_rate: float = 0.5
  feature_dim: int = 4096

  @nn.compact
  def __call__(self, images, train: bool = False, first_row=0, batch_sum=None):
    del batch_sum
    x, indices = images, iter(conv_indices())
    zeros = nn.initializers.zeros
    for stage in STAGES:
      for features in stage:
        name = f"features_{next(indices)}"
        x = nn.relu(conv(x, features, 3, 1, 1, name, he_normal_fan_out, zeros))
      x = max_pool(x, 2, 2)
    x = flatten_like_torch(adaptive_avg_pool(x, 7))
    fc6, fc7 = (f"classifier_{n}" for n in CLASSIFIER_FCS)
    x = nn.relu(linear(x, self.feature_dim, fc6, normal(0.01), zeros))
    x = RowDropout(self.dropout_rate)(x, train, first_row)
    return nn.relu(linear(x, self.feature_dim, fc7, normal(0.01), zeros))
