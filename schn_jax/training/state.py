"""The one training-state pytree, and the optimizers that reproduce torch's Adam."""

import math
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax


def _bias_correction(decay, count, dtype):
  """1 - decay**count to the precision of `dtype`. torch computes it in double; in
  float32, 1 - float32(0.999)**t loses four to five digits (optax.scale_by_adam does
  that), which scales every Adam step by up to 1e-5 and made float32 runs drift from
  torch's several times faster than torch's own float32 drifts from float64."""
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(math.log(decay), dtype))


def scale_by_torch_adam(b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.Adam's step direction (torch 2's update order): m lerps toward g,
  v = b2 v + (1 - b2) g^2, direction = m / (sqrt(v) / sqrt(bc2) + eps) / bc1.
  The state is optax's ScaleByAdamState."""

  def init(params):
    zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update(grads, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree_util.tree_map(lambda g, m: m + (1 - b1) * (g - m), grads, state.mu)
    nu = jax.tree_util.tree_map(lambda g, v: b2 * v + (1 - b2) * g * g, grads, state.nu)

    def direction(m, v):
      bc1, bc2 = _bias_correction(b1, count, m.dtype), _bias_correction(b2, count, m.dtype)
      return m / (jnp.sqrt(v) / jnp.sqrt(bc2) + eps) / bc1

    return (
      jax.tree_util.tree_map(direction, mu, nu),
      optax.ScaleByAdamState(count=count, mu=mu, nu=nu),
    )

  return optax.GradientTransformation(init, update)


def torch_adam(weight_decay):
  """torch.optim.Adam's direction: L2 weight decay added to the gradient before the
  moments (not decoupled), betas (0.9, 0.999), eps 1e-8. The learning rate is applied
  by `adam_step`, so the adversarial rate can follow the outer iteration."""
  return optax.chain(optax.add_decayed_weights(weight_decay), scale_by_torch_adam())


class Optimizers(NamedTuple):
  cycle: optax.GradientTransformation
  discriminator: optax.GradientTransformation
  generator: optax.GradientTransformation


OPTIMIZER_SEMANTICS = ("torch18", "torch2")


def generator_mask(cycle_params):
  """The cycle parameters the generator loss reaches: all but the latent hash head.

  The reconstructions read the latent FEATURE, never U_latent, so the G loss gives
  that head no gradient.
  """
  return flax.traverse_util.path_aware_map(
    lambda path, _: tuple(path[:2]) != ("latent", "hash"), cycle_params
  )


def make_optimizers(weight_decay, semantics, cycle_params):
  """The three Adams. `semantics` says what the G optimizer does with the latent hash
  head, which its loss does not reach: under torch 1.8 (which the reference pins)
  zero_grad() leaves a zero gradient there, so Adam still steps it by weight decay
  alone, with the G optimizer's own moments; torch >= 2 leaves the gradient None and
  Adam skips the parameter, moments and all (a mask: a plain optax Adam would not)."""
  if semantics not in OPTIMIZER_SEMANTICS:
    raise ValueError(f"optimizer semantics {semantics!r}: one of {OPTIMIZER_SEMANTICS}")
  adam = torch_adam(weight_decay)
  generator = adam if semantics == "torch18" else optax.masked(adam, generator_mask(cycle_params))
  return Optimizers(adam, adam, generator)


def adam_step(tx, grads, opt_state, params, learning_rate):
  direction, opt_state = tx.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda d: -learning_rate * d, direction)
  return optax.apply_updates(params, updates), opt_state


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue, as one pytree.

  params: SCHN parameters ({'visual', 'semantic', 'cycle'}).
  batch_stats: BatchNorm running statistics ({'visual': ...} for backbones with
    BatchNorm, {} otherwise); updated by the cycle step in training mode, used by
    evaluation and encoding.
  disc_params: discriminator parameters ({} for mmasia).
  opt_cycle: Adam moments over all SCHN parameters (the cycle step).
  opt_d: Adam moments of the discriminator step.
  opt_g: Adam moments of the generator step, over params['cycle'] only, kept
    apart from opt_cycle as in the reference (two optimizers, two states).
  database_codes: (N, c) learned asymmetric codes of the training database,
    in {-1, 0, +1}; rows never sampled stay 0.
  rng: the run's dropout key; outer iteration t folds in t, step s of it folds in s.
  iteration: outer iterations completed.
  """

  params: Any
  batch_stats: Any
  disc_params: Any
  opt_cycle: Any
  opt_d: Any
  opt_g: Any
  database_codes: jax.Array
  rng: jax.Array
  iteration: jax.Array


def create_state(
  params, disc_params, optimizers, database_size, bits, rng, dtype=jnp.float32, batch_stats=None
):
  """A fresh state; mmasia (no discriminator) passes disc_params={} and gets empty D/G states.
  Parameters, running statistics and codes are cast to `dtype` (float64 for parity checks)."""
  params, batch_stats, disc_params = jax.tree_util.tree_map(
    lambda x: jnp.asarray(x, dtype), (params, batch_stats or {}, disc_params)
  )
  return TrainState(
    params=params,
    batch_stats=batch_stats,
    disc_params=disc_params,
    opt_cycle=optimizers.cycle.init(params),
    opt_d=optimizers.discriminator.init(disc_params),
    opt_g=optimizers.generator.init(params["cycle"]) if disc_params else optax.EmptyState(),
    database_codes=jnp.zeros((database_size, bits), dtype),
    rng=rng,
    iteration=jnp.zeros((), jnp.int32),
  )
