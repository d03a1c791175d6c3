"""Semantic space: multi-hot label -> feature F_label (512-d), and its hash head."""

import flax.linen as nn

from schn_jax.models.layers import FeatureMLP, HashHead


class SemanticNet(nn.Module):
  bits: int

  @nn.compact
  def __call__(self, labels):
    features = FeatureMLP(name="mlp")(labels)
    return features, HashHead(self.bits, name="hash")(features)
