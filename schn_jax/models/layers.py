"""Building blocks shared by the spaces of SCHN.

Initialisers follow torch's defaults (uniform in +-1/sqrt(fan_in)) so a model
trained from scratch here starts from the same distribution as the reference.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.Linear / Conv2d default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def Dense(features: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=torch_kernel_init, name=name)


class RowDropout(nn.Module):
  """Inverted dropout whose mask for a row depends only on the 'dropout' rng and
  the row's index in the global batch (`first_row` + its local index).

  A device holding rows first_row.. of a batch thus draws the same masks for
  them as one device holding the whole batch, and data-parallel training with
  dropout on equals single-device training. Each element is kept with
  probability 1 - rate, as in nn.Dropout.
  """
  rate: float

  @nn.compact
  def __call__(self, x, train: bool, first_row=0):
    if not train or self.rate == 0:
      return x
    key, keep = self.make_rng("dropout"), 1.0 - self.rate
    rows = first_row + jnp.arange(x.shape[0])
    mask = jax.vmap(lambda row: jax.random.bernoulli(jax.random.fold_in(key, row), keep, x.shape[1:]))(rows)
    return jnp.where(mask, x / keep, 0.0)


class HashHead(nn.Module):
  """Linear map to `bits` continuous codes, squashed by `activation`.

  tanh gives codes in (-1, 1) (visual, semantic, reconstruction spaces);
  sigmoid gives (0, 1) (the transitive latent space, as in the reference).
  """
  bits: int
  activation: Callable[[jax.Array], jax.Array] = jnp.tanh

  @nn.compact
  def __call__(self, x):
    return self.activation(Dense(self.bits, name="linear")(x))


class FeatureMLP(nn.Module):
  """in -> 1024 -> 512 with ReLU after each layer (the reference's `net`)."""
  hidden: int = 1024
  out: int = 512

  @nn.compact
  def __call__(self, x):
    x = nn.relu(Dense(self.hidden, name="net_0")(x))
    return nn.relu(Dense(self.out, name="net_2")(x))


class BatchAttention(nn.Module):
  """Single-head scaled dot-product attention ACROSS THE SAMPLES of a batch.

  The batch is the sequence: row i of the output mixes the value rows of every
  sample j with weights softmax_j(q_i . k_j / sqrt(E)). E, the output width,
  equals the query width. Inputs are (B, D) arrays.
  """

  @nn.compact
  def __call__(self, query, key, value):
    width = query.shape[-1]
    q = Dense(width, name="q_proj")(query)
    k = Dense(width, name="k_proj")(key)
    v = Dense(width, name="v_proj")(value)
    scores = q @ k.T / jnp.sqrt(jnp.asarray(width, q.dtype))
    weights = jax.nn.softmax(scores, axis=-1)
    self.sow("intermediates", "weights", weights)
    return Dense(width, name="out_proj")(weights @ v)


class GraphConv(nn.Module):
  """GC(X) = A @ (X @ W) + b with the raw 0/1 batch label graph A (no normalisation)."""
  features: int

  @nn.compact
  def __call__(self, x, adjacency):
    kernel = self.param("kernel", torch_kernel_init, (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return adjacency @ (x @ kernel) + bias
