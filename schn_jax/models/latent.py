"""Transitive latent space: batch attention + graph convolution over the batch label graph."""

import flax.linen as nn

from schn_jax.models.layers import BatchAttention, GraphConv, HashHead


class TransitiveLatent(nn.Module):
  """(F_image, F_label, label graph) -> (latent feature (B,1024), U_latent in (0,1)).

  Semantic features attend over visual features across the batch; a graph
  convolution then propagates along shared labels. The latent feature is the
  ReLU output (before dropout), which the reconstruction blocks consume.
  """

  bits: int
  hidden: int = 1024
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, image_features, label_features, adjacency, train: bool = False):
    attended = BatchAttention(name="attention")(label_features, label_features, image_features)
    latent = nn.relu(GraphConv(self.hidden, name="graph_conv")(attended, adjacency))
    dropped = nn.Dropout(self.dropout_rate, deterministic=not train)(latent)
    return latent, HashHead(self.bits, activation=nn.sigmoid, name="hash")(dropped)
