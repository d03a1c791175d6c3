"""Building blocks shared by the spaces of SCHN.

Every layer trained from scratch starts from torch's default distribution, so a
model initialised here matches the reference's in distribution (docs/method.md):
`nn.Linear` and `nn.Conv2d` weights and biases U(+-1/sqrt(fan_in));
`nn.MultiheadAttention` q/k/v projections xavier_uniform, their biases and the
output projection's bias 0; the graph convolution U(+-1/sqrt(out_features)).
The torchvision backbones that set their own initialisation (ResNet, VGG) pass
theirs (`he_normal_fan_out`, `normal`) to `conv` and `linear`.
Layers take their dtype from their inputs and parameters, so a model whose
parameters are float64 computes in float64.
"""

import functools
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


def normal(std: float):
  """N(0, std^2), torch's `normal_(0, std)`."""

  def init(key, shape, dtype=jnp.float32):
    return std * jax.random.normal(key, shape, dtype)

  return init


def he_normal_fan_out(key, shape, dtype=jnp.float32):
  """torch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")` for an HWIO kernel:
  N(0, 2 / (kh * kw * out)), not truncated."""
  height, width, _, out = shape
  return normal(np.sqrt(2.0 / (height * width * out)))(key, shape, dtype)


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


def conv(
  x,
  features: int,
  kernel: int,
  stride: int,
  padding: int,
  name: str,
  kernel_init=None,
  bias_init=None,
  use_bias: bool = True,
):
  """nn.Conv applied to NHWC `x`, initialised as torch.nn.Conv2d unless told otherwise;
  its gradients are written to run fast inside loops on XLA:CPU (models/conv.py)."""
  bound = 1.0 / np.sqrt(x.shape[-1] * kernel * kernel)
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    use_bias=use_bias,
    kernel_init=kernel_init or uniform(bound),
    bias_init=bias_init or uniform(bound),
    conv_general_dilated=conv_general_dilated,
    name=name,
  )(x)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d over the channels of NHWC maps: `scale` (torch's weight) 1 and
  `bias` 0 at first; running `mean` 0 and `var` 1 in the 'batch_stats' collection.

  With `batch_sum` None it normalises with the running statistics (torch's eval mode).
  Otherwise `batch_sum` sums a per-device value over the devices that hold the global
  batch (the identity on one device), and the layer normalises with the GLOBAL batch's
  mean and biased variance, so that N devices compute what one device does; when the
  collection is mutable it also moves the running statistics toward the batch's by
  `momentum`, the variance unbiased (n / (n - 1)), as torch's training mode does.
  """

  momentum: float = 0.1
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, batch_sum=None):
    channels = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
    running_var = self.variable("batch_stats", "var", jnp.ones, (channels,))
    if batch_sum is None:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      count = batch_sum(jnp.asarray(x.size // channels, x.dtype))
      mean = batch_sum(x.sum(axes)) / count
      # Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which
      # cancels badly for ReLU outputs whose mean is large against their spread.
      var = batch_sum(jnp.square(x - mean).sum(axes)) / count
      if self.is_mutable_collection("batch_stats") and not self.is_initializing():
        # torch refuses a single value per channel; n - 1 is kept >= 1 instead.
        unbiased = var * count / jnp.maximum(count - 1, 1)
        m = self.momentum
        running_mean.value = (1 - m) * running_mean.value + m * jax.lax.stop_gradient(mean)
        running_var.value = (1 - m) * running_var.value + m * jax.lax.stop_gradient(unbiased)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


def adaptive_avg_pool(x, size: int):
  """torch.nn.AdaptiveAvgPool2d(size) for NHWC input (bins floor(i*H/s)..ceil((i+1)*H/s))."""

  def bins(n):
    m = np.zeros((size, n))
    for i in range(size):
      lo, hi = (i * n) // size, -((-(i + 1) * n) // size)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return jnp.asarray(m, x.dtype)

  return jnp.einsum("ih,jw,bhwc->bijc", bins(x.shape[1]), bins(x.shape[2]), x)


def max_pool(x, window: int, stride: int, padding: int = 0):
  """Max pooling of NHWC maps (torch's MaxPool2d: -inf padding, floor) as an elementwise
  max over strided slices.

  Same values as nn.max_pool; on XLA:CPU its gradient (a select per slice) is
  several times faster than the select-and-scatter of reduce_window.
  """
  if padding:
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    x = jnp.pad(x, pad, constant_values=-jnp.inf)
  height = (x.shape[1] - window) // stride + 1
  width = (x.shape[2] - window) // stride + 1
  slices = [
    x[:, i : i + stride * (height - 1) + 1 : stride, j : j + stride * (width - 1) + 1 : stride]
    for i in range(window)
    for j in range(window)
  ]
  return functools.reduce(jnp.maximum, slices)


def flatten_like_torch(x):
  # torch flattens NCHW feature maps channel-major; doing the same keeps fc6
  # weights interchangeable with torchvision checkpoints.
  return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


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
