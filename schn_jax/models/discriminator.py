"""Discriminator (TOMM variant): is a pair of codes real or reconstructed?"""

import flax.linen as nn
import jax.numpy as jnp

from schn_jax.models.layers import FeatureMLP, HashHead


class Discriminator(nn.Module):
  """Two heads (image codes, label codes), each c->1024->512->1 with tanh mapped to
  a probability by (t+1)/2. Returns (2B,) probabilities: image rows, then label rows."""

  @nn.compact
  def __call__(self, image_codes, label_codes):
    probs = []
    for name, codes in [("image", image_codes), ("label", label_codes)]:
      t = HashHead(1, name=f"{name}_head")(FeatureMLP(name=f"{name}_mlp")(codes))
      probs.append((t[:, 0] + 1.0) / 2.0)
    return jnp.concatenate(probs)
