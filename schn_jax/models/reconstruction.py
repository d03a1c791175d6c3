"""Reconstruction blocks: rebuild a space's codes from another space through attention."""

import flax.linen as nn

from schn_jax.models.layers import BatchAttention, FeatureMLP, HashHead


class Reconstruction(nn.Module):
  """attention(query=key=`guide`, value=`source`) -> MLP (->1024->512) -> tanh codes."""

  bits: int

  @nn.compact
  def __call__(self, guide, source):
    attended = BatchAttention(name="attention")(guide, guide, source)
    features = FeatureMLP(name="mlp")(attended)
    return features, HashHead(self.bits, name="hash")(features)
