"""Discrete cyclic coordinate descent update of the sampled database codes (docs/method.md, "The asymmetric loop")."""

import jax
import jax.numpy as jnp


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
