"""The per-batch SCHN step: cycle update, then (tomm) re-forward, D update and G update.

Written once as a per-device function. With `axis_name` set it runs inside
shard_map/pmap over a data axis: every device gathers the features, labels and
codes of the GLOBAL batch, because batch attention and the batch label graph
couple all samples, computes the cycle part and the losses on that global
batch, and differentiates loss / n_devices; summing gradients over devices
then gives exactly the single-device gradient (backbone parameters receive
their rows' share through `gather_rows`' backward pass). BatchNorm layers, in
training mode, normalise with the global batch's statistics (sums over the
devices), so the running statistics, like everything else, are those of one
device holding the whole batch.
"""

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from schn_jax.training import losses
from schn_jax.training.state import adam_step


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the per-batch step needs of the run's config (configs/default.py)."""

  variant: str
  learning_rate: float
  gamma: float
  # TOMM: D and G rates are divided by `lr_decay_factor` at the end of these 0-based
  # outer iterations.
  lr_milestones: tuple
  lr_decay_factor: float
  # The cycle rate (every parameter's cycle-loss step) is divided by
  # `cycle_lr_decay_factor` at the end of these; the reference never decays it.
  cycle_lr_milestones: tuple = ()
  cycle_lr_decay_factor: float = 1.0

  @classmethod
  def from_config(cls, config):
    decay = config.adversarial_lr_decay
    milestones = decay.milestones_if_max_iter_50 if config.max_iter == 50 else decay.milestones
    return cls(
      config.variant,
      learning_rate=config.learning_rate,
      gamma=config.gamma,
      lr_milestones=tuple(milestones),
      lr_decay_factor=decay.factor,
      cycle_lr_milestones=tuple(config.cycle_lr_decay.milestones),
      cycle_lr_decay_factor=config.cycle_lr_decay.factor,
    )

  @property
  def adversarial(self):
    return self.variant == "tomm"


def decayed(learning_rate, milestones, factor, iteration):
  """`learning_rate` divided by `factor` once per milestone that `iteration` is past."""
  passed = sum((iteration > m).astype(jnp.int32) for m in milestones)
  return learning_rate / factor**passed


def adversarial_learning_rate(config, iteration):
  return decayed(config.learning_rate, config.lr_milestones, config.lr_decay_factor, iteration)


def cycle_learning_rate(config, iteration):
  return decayed(
    config.learning_rate, config.cycle_lr_milestones, config.cycle_lr_decay_factor, iteration
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gather_rows(x, axis_name):
  """All devices' rows of `x`, in device order, for a REPLICATED consumer.

  Every device then runs the same computation on the same global rows, so the
  cotangent reaching the gather is equal on every device. The true transpose
  (all_gather's psum_scatter) would sum those n equal copies of each device's
  rows; this one takes this device's rows times n, which is the same number
  without a collective in the backward pass. (It also avoids a reduce-scatter,
  which makes the following gradient all-reduce crawl on XLA:CPU's gloo
  collectives when a process holds several devices: docs/scaling.md.)
  """
  return jax.lax.all_gather(x, axis_name, tiled=True)


def _gather_rows_fwd(x, axis_name):
  return gather_rows(x, axis_name), None


def _gather_rows_bwd(axis_name, _, cotangent):
  n = jax.lax.axis_size(axis_name)
  rows = cotangent.shape[0] // n
  mine = jax.lax.dynamic_slice_in_dim(cotangent, jax.lax.axis_index(axis_name) * rows, rows)
  return (mine * n,)


gather_rows.defvjp(_gather_rows_fwd, _gather_rows_bwd)


class Collectives:
  """Global-batch view for the per-device step (identity when `axis_name` is None)."""

  def __init__(self, axis_name: Optional[str]):
    self.axis_name = axis_name

  def gather(self, x):
    return x if self.axis_name is None else gather_rows(x, self.axis_name)

  def first_row(self, local_rows):
    """Global index of this device's first row (devices hold consecutive blocks)."""
    return 0 if self.axis_name is None else jax.lax.axis_index(self.axis_name) * local_rows

  @property
  def size(self):
    return 1 if self.axis_name is None else jax.lax.axis_size(self.axis_name)

  def sum(self, tree):
    return tree if self.axis_name is None else jax.lax.psum(tree, self.axis_name)


def make_step_functions(model, discriminator, optimizers, config: StepConfig, axis_name=None):
  """Returns (cycle_update, adversarial_update, train_step), all pure and jittable.

  train_step(state, batch, rng) -> (state, outputs, metrics); batch holds this
  device's `images` (b,H,W,C), `labels` (b,K) and `database_codes` (b,c).
  The sub-steps also return their gradients, for parity checks.
  """
  coll = Collectives(axis_name)

  def forward(params, batch_stats, batch, rng, train, update_statistics=False):
    """(outputs, batch_stats): the running statistics after this forward, which
    moves them (in training mode) only when `update_statistics`."""
    labels = coll.gather(batch["labels"])
    outputs, updated = model.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["images"],
      batch["labels"],
      losses.label_similarity(labels, labels),
      train,
      gather=coll.gather,
      first_row=coll.first_row(batch["images"].shape[0]),
      device_sum=coll.sum,
      rngs={"dropout": rng},
      mutable=["batch_stats"] if update_statistics else [],
    )
    return outputs, updated.get("batch_stats", batch_stats)

  def cycle_update(state, batch, rng, train=True):
    labels = coll.gather(batch["labels"])
    database_codes = coll.gather(batch["database_codes"])

    def loss_fn(params):
      outputs, batch_stats = forward(
        params, state.batch_stats, batch, rng, train, update_statistics=True
      )
      loss, terms = losses.cycle_loss(
        outputs, database_codes, losses.label_similarity(labels, labels), config.gamma
      )
      return loss / coll.size, (outputs, terms, batch_stats)

    (_, (outputs, terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    grads = coll.sum(grads)
    params, opt_cycle = adam_step(
      optimizers.cycle,
      grads,
      state.opt_cycle,
      state.params,
      cycle_learning_rate(config, state.iteration),
    )
    state = state.replace(params=params, batch_stats=batch_stats, opt_cycle=opt_cycle)
    return state, outputs, terms, grads

  def adversarial_update(state, batch, rng, train=True):
    """Re-forward with the updated parameters, one D step, one G step over the cycle part.

    The re-forward normalises as the cycle step's did but leaves the running
    statistics alone: each batch moves them once."""
    learning_rate = adversarial_learning_rate(config, state.iteration)

    def reconstructions(cycle_params):
      params = {**state.params, "cycle": cycle_params}
      outputs, _ = forward(params, state.batch_stats, batch, rng, train)
      return (outputs["U_image_rec"], outputs["U_label_rec"]), outputs

    fake, pullback, outputs = jax.vjp(reconstructions, state.params["cycle"], has_aux=True)
    real = (outputs["U_image"], outputs["U_label"])
    fake_fixed = jax.lax.stop_gradient(fake)

    def d_loss(disc_params):
      real_probs = discriminator.apply({"params": disc_params}, *real)
      fake_probs = discriminator.apply({"params": disc_params}, *fake_fixed)
      real_loss = losses.binary_cross_entropy(real_probs, 1.0)
      fake_loss = losses.binary_cross_entropy(fake_probs, 0.0)
      return (real_loss + fake_loss) / coll.size, (real_loss, fake_loss, real_probs, fake_probs)

    (_, (real_loss, fake_loss, real_probs, fake_probs)), grads_d = jax.value_and_grad(
      d_loss, has_aux=True
    )(state.disc_params)
    grads_d = coll.sum(grads_d)
    disc_params, opt_d = adam_step(
      optimizers.discriminator, grads_d, state.opt_d, state.disc_params, learning_rate
    )

    def g_loss(fake_codes):
      probs = discriminator.apply({"params": disc_params}, *fake_codes)
      return losses.binary_cross_entropy(probs, 1.0) / coll.size, probs

    (_, g_probs), fake_grad = jax.value_and_grad(g_loss, has_aux=True)(fake)
    (grads_g,) = pullback(fake_grad)
    grads_g = coll.sum(grads_g)
    g_loss_value = losses.binary_cross_entropy(g_probs, 1.0)
    cycle, opt_g = adam_step(
      optimizers.generator, grads_g, state.opt_g, state.params["cycle"], learning_rate
    )
    state = state.replace(
      params={**state.params, "cycle": cycle}, opt_g=opt_g, disc_params=disc_params, opt_d=opt_d
    )
    metrics = {
      "lossD_real": real_loss,
      "lossD_fake": fake_loss,
      "lossD": real_loss + fake_loss,
      "lossG": g_loss_value,
    }
    probes = {
      "reforward": outputs,
      "D_real_probs": real_probs,
      "D_fake_probs": fake_probs,
      "G_probs": g_probs,
      "gradD": grads_d,
      "gradG": grads_g,
    }
    return state, metrics, probes

  def train_step(state, batch, rng, train=True):
    cycle_rng, adversarial_rng = jax.random.split(rng)
    state, outputs, terms, _ = cycle_update(state, batch, cycle_rng, train)
    metrics = dict(terms)
    codes = {k: outputs[k] for k in ("U_image", "U_label", "U_latent")}
    if config.adversarial:
      state, adversarial_metrics, probes = adversarial_update(state, batch, adversarial_rng, train)
      metrics.update(adversarial_metrics)
      # The reference keeps the codes of its second forward (after the cycle update).
      codes = {k: probes["reforward"][k] for k in codes}
    return state, codes, metrics

  return cycle_update, adversarial_update, train_step
