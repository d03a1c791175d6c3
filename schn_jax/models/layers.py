"""Building blocks shared by the spaces of SCHN.

Every layer trained from scratch starts from torch's default distribution, so a
model initialised here matches the reference's in distribution (docs/method.md):
`nn.Linear` and `nn.Conv2d` weights and biases U(+-1/sqrt(fan_in));
`nn.MultiheadAttention` q/k/v projections xavier_uniform, their biases and the
output projection's bias 0; the graph convolution U(+-1/sqrt(out_features)).
Layers take their dtype from their inputs and parameters, so a model whose
parameters are float64 computes in float64.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.models.conv import conv_general_dilated


def uniform(bound: float):
  """U(-bound, bound), torch's `uniform_(-bound, bound)`."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def linear(x, features: int, name: str, kernel_init=None, bias_init=None):
  """nn.Dense applied to `x`, initialised as torch.nn.Linear (bounds from x's width).

  Called from a parent's compact method, so the layer is the parent's `name`.
  """
  bound = 1.0 / np.sqrt(x.shape[-1])
  return nn.Dense(
    features,
    kernel_init=kernel_init or uniform(bound),
    bias_init=bias_init or uniform(bound),
    name=name,
  )(x)


def conv(x, features: int, kernel: int, stride: int, padding: int, name: str):
  """nn.Conv applied to NHWC `x`, initialised as torch.nn.Conv2d; its gradients are
  written to run fast inside loops on XLA:CPU (models/conv.py)."""
  bound = 1.0 / np.sqrt(x.shape[-1] * kernel * kernel)
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    kernel_init=uniform(bound),
    bias_init=uniform(bound),
    conv_general_dilated=conv_general_dilated,
    name=name,
  )(x)


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
    mask = jax.vmap(
      lambda row: jax.random.bernoulli(jax.random.fold_in(key, row), keep, x.shape[1:])
    )(rows)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class HashHead(nn.Module):
  """Linear map to `bits` continuous codes, squashed by `activation`.

  tanh gives codes in (-1, 1) (visual, semantic, reconstruction spaces);
  sigmoid gives (0, 1) (the transitive latent space, as in the reference).
  """

  bits: int
  activation: Callable[[jax.Array], jax.Array] = jnp.tanh

  @nn.compact
  def __call__(self, x):
    return self.activation(linear(x, self.bits, "linear"))


class FeatureMLP(nn.Module):
  """in -> 1024 -> 512 with ReLU after each layer (the reference's `net`)."""

  hidden: int = 1024
  out: int = 512

  @nn.compact
  def __call__(self, x):
    x = nn.relu(linear(x, self.hidden, "net_0"))
    return nn.relu(linear(x, self.out, "net_2"))


class BatchAttention(nn.Module):
  """Single-head scaled dot-product attention ACROSS THE SAMPLES of a batch.

  The batch is the sequence: row i of the output mixes the value rows of every
  sample j with weights softmax_j(q_i . k_j / sqrt(E)). E, the output width,
  equals the query width. Inputs are (B, D) arrays.
  """

  @nn.compact
  def __call__(self, query, key, value):
    width = query.shape[-1]
    # torch.nn.MultiheadAttention with kdim/vdim: separate xavier_uniform projections,
    # zero in-projection biases; the output projection is an nn.Linear with zero bias.
    project = dict(kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros)
    q = linear(query, width, "q_proj", **project)
    k = linear(key, width, "k_proj", **project)
    v = linear(value, width, "v_proj", **project)
    scores = q @ k.T / jnp.sqrt(jnp.asarray(width, q.dtype))
    weights = jax.nn.softmax(scores, axis=-1)
    self.sow("intermediates", "weights", weights)
    return linear(weights @ v, width, "out_proj", bias_init=nn.initializers.zeros)


class GraphConv(nn.Module):
  """GC(X) = A @ (X @ W) + b with the raw 0/1 batch label graph A (no normalisation)."""

  features: int

  @nn.compact
  def __call__(self, x, adjacency):
    bound = 1.0 / np.sqrt(self.features)  # the reference layer's bound: 1/sqrt(out_features)
    kernel = self.param("kernel", uniform(bound), (x.shape[-1], self.features))
    bias = self.param("bias", uniform(bound), (self.features,))
    return adjacency @ (x @ kernel) + bias
