"""Discrete cyclic coordinate descent of the sampled database codes, with the soft
similarity and its ratio r that it uses (docs/method.md, "The asymmetric loop").

The one home of these: the training loop, the parity checks and the benchmarks
call what is here.
"""

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax.training import losses

# The sample's continuous codes that the epochs fill in, in dcc_update's order.
CODE_NAMES = ("U_image", "U_label", "U_latent")


def positive_ratio(sample_labels, database_labels, chunk=2048):
  """r = sum(S) / sum(1 - S) of the +-1 similarity S between a sample and the database.

  Counted exactly in integers over the distinct label patterns of each side
  (ten for single-label data), so it costs O((ns + N) K) rather than an
  (ns, N) comparison, and stays exact where ns * N is beyond float32's range.
  """

  def patterns(labels):
    return np.unique(np.asarray(labels) > 0, axis=0, return_counts=True)

  sample_patterns, sample_counts = patterns(sample_labels)
  database_patterns, database_counts = patterns(database_labels)
  positives = 0
  for i in range(0, len(sample_patterns), chunk):
    similar = (
      sample_patterns[i : i + chunk].astype(np.float32) @ database_patterns.T.astype(np.float32)
    ) > 0
    positives += int(sample_counts[i : i + chunk] @ similar.astype(np.int64) @ database_counts)
  negatives = len(sample_labels) * len(database_labels) - positives
  return (positives - negatives) / (2.0 * negatives)


def soften(similar, r):
  """The train loop's soft similarity: 0/1 -> +-1, then S*(1+r) - r, so positives
  stay 1 and negatives become -(1 + 2r)."""
  return (2.0 * similar - 1.0) * (1.0 + r) - r


def soft_similarity(labels, other_labels, r):
  """The soft similarity DCC uses between two sets of labels: `soften` of the
  0/1 label similarity, with the sample's ratio r (`positive_ratio`)."""
  return soften(losses.label_similarity(labels, other_labels), r)


def hyper(config, dtype):
  """alpha, beta and gamma of `config` as arrays of the codes' dtype."""
  return {k: jnp.asarray(config[k], dtype) for k in ("alpha", "beta", "gamma")}


def update_rows(database_codes, sample, labels, r, buffers, hyper):
  """DCC on the sampled rows of `database_codes` (labels: the whole database's;
  buffers: the sample's continuous codes by CODE_NAMES); the (ns, ns) soft
  similarity is built here, inside the program."""
  sample_labels = labels[sample].astype(database_codes.dtype)
  similarity = soft_similarity(sample_labels, sample_labels, r)
  codes = dcc_update(database_codes[sample], *(buffers[k] for k in CODE_NAMES), similarity, **hyper)
  return database_codes.at[sample].set(codes)


@jax.jit
def dcc_update(codes, u_image, u_label, u_latent, sample_similarity, alpha, beta, gamma):
  """One bit-by-bit pass over the sampled database codes.

  codes: (ns, c) current codes of the sampled rows, in {-1, 0, +1};
  u_image, u_label, u_latent: (ns, c) the sample's continuous codes;
  sample_similarity: (ns, ns) soft similarity restricted to the sample;
  alpha, beta: weights of U_label and U_latent; gamma: the quantisation weight.
  Bits are updated in order, each seeing the bits already updated;
  sign(0) = 0 as in the reference (torch.sign).
  """
  bits = codes.shape[1]
  q = bits * sample_similarity.T @ u_image + gamma * u_image
  gram = u_image.T @ u_image  # (c, c): U'.T @ U[:, k] without re-multiplying per bit

  def update_bit(k, b):
    others = b.at[:, k].set(0.0)
    value = q[:, k] - others @ gram[:, k] + alpha * u_label[:, k] + beta * u_latent[:, k]
    return b.at[:, k].set(jnp.sign(value))

  return jax.lax.fori_loop(0, bits, update_bit, codes.astype(u_image.dtype))
