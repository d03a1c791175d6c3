"""SCHN objectives (docs/method.md, "Losses"), as pure jittable functions."""

import jax
import jax.numpy as jnp


def feature_loss(codes, database_codes, similarity):
  """Returns (hash term, quantisation term) for codes (B,c) against database codes (B,c).

  hash = mean((c*S - U @ B.T)^2) * 12 / c with the 0/1 batch similarity S;
  quantisation = mean((U - B)^2). The feature loss is hash + gamma * quantisation.
  """
  bits = codes.shape[-1]
  hash_term = jnp.mean((bits * similarity - codes @ database_codes.T) ** 2) * 12.0 / bits
  return hash_term, jnp.mean((codes - database_codes) ** 2)


def cycle_loss(outputs, database_codes, similarity, gamma):
  """The cycle loss and its named terms (the fixtures' loss.npz keys)."""
  terms = {}
  total = 0.0
  for space in ("image", "label", "latent"):
    hash_term, quant = feature_loss(outputs[f"U_{space}"], database_codes, similarity)
    terms[f"hash_{space}"], terms[f"quant_{space}"] = hash_term, quant
    terms[f"feature_{space}"] = hash_term + gamma * quant
    total = total + terms[f"feature_{space}"]
  for space in ("image", "label"):
    terms[f"rec_{space}"] = jnp.mean((outputs[f"U_{space}_rec"] - outputs[f"U_{space}"]) ** 2)
    total = total + terms[f"rec_{space}"]
  terms["loss_cycle"] = total
  return total, terms


@jax.custom_vjp
def binary_cross_entropy(probs, target):
  """torch.nn.BCELoss (mean): log terms clamped at -100 in the value, and torch's
  gradient (p - y) / max(p (1 - p), 1e-12), which stays finite when a saturated
  discriminator outputs exactly 0 or 1 (differentiating the clamped logs would
  give 0 * inf = NaN there)."""
  log_p = jnp.maximum(jnp.log(probs), -100.0)
  log_not_p = jnp.maximum(jnp.log1p(-probs), -100.0)
  return -jnp.mean(target * log_p + (1.0 - target) * log_not_p)


def _bce_forward(probs, target):
  return binary_cross_entropy(probs, target), (probs, target)


def _bce_backward(residuals, grad):
  probs, target = residuals
  scale = grad / probs.size
  d_probs = scale * (probs - target) / jnp.maximum(probs * (1.0 - probs), 1e-12)
  d_target = scale * (jnp.maximum(jnp.log1p(-probs), -100.0) - jnp.maximum(jnp.log(probs), -100.0))
  return d_probs, jnp.sum(d_target) if jnp.ndim(target) == 0 else d_target


binary_cross_entropy.defvjp(_bce_forward, _bce_backward)


def label_similarity(labels_a, labels_b):
  """0/1 similarity (in the labels' dtype): 1 where two multi-hot label rows share a label."""
  return (labels_a @ labels_b.T > 0).astype(labels_a.dtype)
