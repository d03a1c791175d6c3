"""One outer iteration of the asymmetric loop (docs/method.md), compiled whole.

An iteration samples `ns` database items, trains `max_epoch` epochs over them
and DCC-updates their database codes. Here the epochs and batches run inside
compiled programs (`lax.scan` over index arrays), with the (ns, c) code
buffers and the per-step losses on device; the host syncs once per iteration.

Images reach the step in one of two ways:
- **on device**: when the training pool is stored at the served size, needs no
  augmentation and fits in `config.device_pool_mb`, it is uploaded once and
  each batch is gathered on device; the whole iteration, DCC included, is one
  program;
- **streamed**: otherwise the host loader decodes (and augments) chunks of
  `config.stream_chunk` batches in its threads while the device trains on the
  previous chunk (dispatch is asynchronous), and DCC runs on the result.

Both run the same per-batch body, so they give the same numbers.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from schn_jax import errors, sharding
from schn_jax.models import SCHN, Discriminator
from schn_jax.training import dcc
from schn_jax.training.state import create_state, make_optimizers
from schn_jax.training.step import StepConfig, make_step_functions

CODE_NAMES = dcc.CODE_NAMES


# ---------------------------------------------------------------- model and state


@dataclasses.dataclass(frozen=True)
class Pieces:
  """What a run builds once and training never changes: the networks, the
  optimizers and the step's constants. It travels beside the state, which holds
  everything that changes."""

  model: SCHN
  discriminator: Discriminator
  optimizers: Any
  step_config: StepConfig

  def step_functions(self, axis_name=None):
    """(cycle_update, adversarial_update, train_step): `step.make_step_functions`."""
    return make_step_functions(
      self.model, self.discriminator, self.optimizers, self.step_config, axis_name=axis_name
    )


def build(config, bits, image_shape, num_classes, database_size):
  """(the run's Pieces, a fresh state)."""
  model = SCHN.from_config(config, bits)
  discriminator = Discriminator()
  key = jax.random.PRNGKey(config.seed)
  init_key, disc_key, run_key = jax.random.split(jax.random.fold_in(key, bits), 3)
  batch = 2
  variables = model.init(
    init_key,
    jnp.zeros((batch,) + image_shape),
    jnp.zeros((batch, num_classes)),
    jnp.ones((batch, batch)),
  )
  params = variables["params"]
  disc_params = {}
  if config.variant == "tomm":
    disc_params = discriminator.init(disc_key, jnp.zeros((batch, bits)), jnp.zeros((batch, bits)))[
      "params"
    ]
  optimizers = make_optimizers(config.weight_decay, config.optimizer_semantics, params["cycle"])
  state = create_state(
    params,
    disc_params,
    optimizers,
    database_size,
    bits,
    run_key,
    jnp.dtype(config.dtype),
    batch_stats=variables.get("batch_stats", {}),
  )
  return Pieces(model, discriminator, optimizers, StepConfig.from_config(config)), state


DATABASE_INITS = ("zeros", "label_codes")


def initial_database_codes(config, labels, bits, dtype):
  """The (N, c) database codes before the first iteration.

  'zeros' (the reference): a row has no code until it is first sampled, so the
  hash term gives its pairs no gradient. 'label_codes' (an option of ours): each
  row starts from sign(labels @ R), R a seeded random {-1, +1} (K, c) matrix: one
  random code per label pattern (ties to +1), so even the first iteration trains
  toward codes that separate the labels.
  """
  if config.database_init == "zeros":
    return np.zeros((len(labels), bits), dtype)
  codebook = np.random.default_rng((config.seed, bits, 2)).choice(
    [-1.0, 1.0], (labels.shape[1], bits)
  )
  return np.where(labels @ codebook >= 0, 1.0, -1.0).astype(dtype)


# ---------------------------------------------------------------- the plan of an iteration


def training_positions(split):
  """Positions in the database of the protocol's training images, which the outer
  loop samples from (the whole database for CIFAR-10 / Fashion-MNIST, as in ADSH)."""
  positions = np.searchsorted(split.database, split.train)
  inside = positions < len(split.database)
  inside[inside] = split.database[positions[inside]] == split.train[inside]
  if not inside.all():
    raise errors.ConfigError(
      f"{int((~inside).sum())} training images are not in the database: the "
      "asymmetric loop learns database codes for the images it trains on"
    )
  return positions


_COVER_STREAM = (
  1  # keeps the permutations' seeds apart from the iterations' (seed, bits, iteration)
)


def sample_database(config, bits, iteration, database_size, rng):
  """Sorted database positions trained on in outer iteration `iteration`.

  'uniform' (the reference): ns positions uniformly without replacement, anew
  each iteration; rows never drawn keep all-zero codes, so early on mAP is
  bounded by how much of the database has been covered.
  'cover': consecutive ns-blocks of seeded database permutations (a fresh one
  each pass), so ceil(N / ns) iterations give every row a learned code.
  """
  if config.sampling == "uniform":
    return np.sort(rng.choice(database_size, config.sample_size, replace=False))
  blocks = -(-database_size // config.sample_size)
  cover_pass, block = divmod(iteration, blocks)
  order = np.random.default_rng((config.seed, bits, cover_pass, _COVER_STREAM)).permutation(
    database_size
  )
  # The last block of a pass is short; it is topped up from the rest of the pass.
  return np.sort(np.roll(order, -block * config.sample_size)[: config.sample_size])


def plan_iteration(config, pool, bits, iteration):
  """(sample, epoch_orders): the sorted database positions of outer iteration
  `iteration`, drawn from `pool`, and for each epoch the order (positions in the
  sample) its batches take, as consecutive chunks of batch_size. mmasia reshuffles
  every epoch; tomm, like the reference, builds its batches once per outer
  iteration and reuses them."""
  rng = np.random.default_rng((config.seed, bits, iteration))
  sample = np.sort(pool[sample_database(config, bits, iteration, len(pool), rng)])
  epochs = config.max_epoch if config.variant == "mmasia" else 1
  orders = np.stack([rng.permutation(len(sample)) for _ in range(epochs)])
  return sample, np.broadcast_to(orders, (config.max_epoch, len(sample)))


def augment_seed(config, bits, iteration, epoch):
  """The train transform's seed: per epoch for mmasia (it re-augments every epoch),
  per outer iteration for tomm (the same augmented pixels in every epoch)."""
  if config.variant == "mmasia":
    return (config.seed, bits, iteration, epoch)
  return (config.seed, bits, iteration)


def should_evaluate(config, iteration):
  """After `iteration` completed outer iterations: every eval_iter, and at the end."""
  return iteration % config.eval_iter == 0 or iteration == config.max_iter


def batches_per_iteration(config):
  return config.max_epoch * -(-config.sample_size // config.batch_size)


@dataclasses.dataclass
class Batches:
  """An iteration's batches as int32 index arrays. Each epoch has `nb` full batches,
  then, when batch_size does not divide ns, one smaller batch of the rest (torch's
  drop_last=False); `rest_*` hold it, with r = 0 columns when there is none.

  *_rows: database positions; *_positions: places in the sample; *_steps: the
  step's number in the iteration (its dropout key).
  """

  full_rows: np.ndarray  # (E, nb, B)
  full_positions: np.ndarray  # (E, nb, B)
  full_steps: np.ndarray  # (E, nb)
  rest_rows: np.ndarray  # (E, r)
  rest_positions: np.ndarray  # (E, r)
  rest_steps: np.ndarray  # (E, 1), or (E, 0) when r = 0

  @classmethod
  def of(cls, sample, epoch_orders, batch_size):
    orders = np.asarray(epoch_orders, np.int32)
    epochs, size = orders.shape
    full, rest = divmod(size, batch_size)
    cut = full * batch_size
    full_positions = orders[:, :cut].reshape(epochs, full, batch_size)
    steps = np.arange(epochs * (full + (rest > 0)), dtype=np.int32).reshape(epochs, -1)
    return cls(
      sample[full_positions],
      full_positions,
      steps[:, :full],
      sample[orders[:, cut:]],
      orders[:, cut:],
      steps[:, full:],
    )

  def arrays(self):
    return (
      self.full_rows,
      self.full_positions,
      self.full_steps,
      self.rest_rows,
      self.rest_positions,
      self.rest_steps,
    )

  def of_epoch(self, epoch):
    """[(rows (k, b), positions (k, b), steps (k,))]: the epoch's full batches, then its rest."""
    parts = [(self.full_rows[epoch], self.full_positions[epoch], self.full_steps[epoch])]
    if self.rest_rows.shape[1]:
      parts.append(
        (self.rest_rows[epoch][None], self.rest_positions[epoch][None], self.rest_steps[epoch])
      )
    return [p for p in parts if len(p[0])]


# ---------------------------------------------------------------- the compiled iteration


class Iteration:
  """Trains outer iterations of one code length: `iteration(state, plan=None)`.

  Built once per run: it compiles the per-device programs (the step written once
  in `step.py`, mapped over every device of `mesh` by `sharding.map_replicated`)
  and, on the on-device path, uploads the training pool.
  """

  def __init__(self, config, data, pieces, mesh):
    self.config, self.data, self.mesh = config, data, mesh
    _, _, self._train_step = pieces.step_functions(sharding.DATA_AXIS)
    split = data.split
    self.pool = training_positions(split)
    labels = data.labels[split.database]
    self._labels = sharding.replicate(labels, mesh)
    self._database_labels = labels
    images = data.loader.stored_images(
      split.database[self.pool],
      augment=config.data.augment,
      max_bytes=config.device_pool_mb * 2**20,
    )
    self.on_device = images is not None
    self._pool = ()
    if self.on_device:
      # pool_index maps a database position to its row of the uploaded pool.
      pool_index = np.full(len(split.database), -1, np.int32)
      pool_index[self.pool] = np.arange(len(self.pool), dtype=np.int32)
      self._pool = sharding.replicate((images, pool_index), mesh)
    if self.on_device:
      self._program = sharding.map_replicated(self._per_device_iteration, mesh, donate=(0,))
    else:
      self._chunk = sharding.map_replicated(
        self._per_device_chunk, mesh, sharded=(7,), donate=(0, 1)
      )
    self._dcc = jax.jit(dcc.update_rows)

  # ---- per-device programs

  def _run_batches(
    self, state, buffers, labels, rows, positions, steps, key, images=None, pool=None
  ):
    """lax.scan of the step over batches: rows/positions (k, B) of the global batches,
    steps (k,); images (k, b, ...) this device's rows, or gathered from `pool`."""
    devices = jax.lax.axis_size(sharding.DATA_AXIS)
    local = rows.shape[1] // devices
    first = jax.lax.axis_index(sharding.DATA_AXIS) * local

    def body(carry, xs):
      state, buffers = carry
      rows, positions, step, batch_images = xs
      mine = jax.lax.dynamic_slice_in_dim(rows, first, local)
      if batch_images is None:
        pool_images, pool_index = pool
        batch_images = pool_images[pool_index[mine]]
      dtype = state.database_codes.dtype
      batch = {
        "images": self.data.normalize(batch_images, dtype),
        "labels": labels[mine].astype(dtype),
        "database_codes": state.database_codes[mine],
      }
      state, codes, metrics = self._train_step(state, batch, jax.random.fold_in(key, step))
      buffers = {k: buffers[k].at[positions].set(codes[k]) for k in CODE_NAMES}
      return (state, buffers), metrics

    return jax.lax.scan(body, (state, buffers), (rows, positions, steps, images))

  def _per_device_iteration(
    self,
    state,
    pool_images,
    pool_index,
    labels,
    full_rows,
    full_positions,
    full_steps,
    rest_rows,
    rest_positions,
    rest_steps,
    sample,
    r,
    key,
  ):
    """The whole iteration on device: epochs of batches (a scan over epochs, each a
    scan over its full batches and then its smaller rest), then DCC."""
    bits = state.database_codes.shape[1]
    buffers = {k: jnp.zeros((len(sample), bits), state.database_codes.dtype) for k in CODE_NAMES}
    pool = (pool_images, pool_index)

    def epoch(carry, xs):
      rows, positions, steps, rest_rows, rest_positions, rest_steps = xs
      carry, full = self._run_batches(*carry, labels, rows, positions, steps, key, pool=pool)
      rest = {}
      if rest_rows.shape[0]:  # static: the epoch ends with a smaller batch
        carry, rest = self._run_batches(
          *carry, labels, rest_rows[None], rest_positions[None], rest_steps, key, pool=pool
        )
      return carry, (full, rest)

    (state, buffers), (full, rest) = jax.lax.scan(
      epoch,
      (state, buffers),
      (full_rows, full_positions, full_steps, rest_rows, rest_positions, rest_steps),
    )
    state = state.replace(
      database_codes=dcc.update_rows(
        state.database_codes,
        sample,
        labels,
        r,
        buffers,
        dcc.hyper(self.config, state.database_codes.dtype),
      )
    )
    return state, full, rest

  def _per_device_chunk(self, state, buffers, labels, rows, positions, steps, key, images):
    (state, buffers), metrics = self._run_batches(
      state, buffers, labels, rows, positions, steps, key, images=images
    )
    return state, buffers, metrics

  # ---- the host side

  def __call__(self, state, plan=None):
    """One outer iteration: (state, per-step losses {name: (E, steps per epoch)}, images seen).

    `plan` is (sample, epoch_orders) as `plan_iteration` returns; parity checks pass
    the reference's recorded ones.
    """
    config, mesh = self.config, self.mesh
    iteration = int(state.iteration)
    bits = state.database_codes.shape[1]
    sample, epoch_orders = (
      plan if plan is not None else plan_iteration(config, self.pool, bits, iteration)
    )
    sample = np.asarray(sample, np.int32)
    r = np.asarray(
      dcc.positive_ratio(self._database_labels[sample], self._database_labels),
      state.database_codes.dtype,
    )
    batches = Batches.of(sample, epoch_orders, config.batch_size)
    key = sharding.replicate(jax.random.fold_in(state.rng, iteration), mesh)
    if self.on_device:
      state, full, rest = self._program(
        state,
        *self._pool,
        self._labels,
        *sharding.replicate(batches.arrays() + (sample, r), mesh),
        key,
      )
      step_losses = {
        k: np.concatenate(
          [sharding.to_host(full[k])] + ([sharding.to_host(rest[k])] if rest else []), axis=1
        )
        for k in full
      }
    else:
      state, step_losses = self._streamed(state, sample, batches, r, key, iteration)
    check_finite(step_losses, iteration)
    return (
      state.replace(iteration=state.iteration + 1),
      step_losses,
      batches.full_rows.size + batches.rest_rows.size,
    )

  def _streamed(self, state, sample, batches, r, key, iteration):
    """A program per chunk of batches, dispatched without waiting: the host loads
    the next chunk while the device trains on the last one, and syncs once, on the
    losses, after DCC."""
    config, mesh = self.config, self.mesh
    bits, dtype = state.database_codes.shape[1], state.database_codes.dtype
    buffers = sharding.replicate(
      {k: np.zeros((len(sample), bits), dtype) for k in CODE_NAMES}, mesh
    )
    per_epoch = []
    for epoch in range(len(batches.full_rows)):
      seed = augment_seed(config, bits, iteration, epoch)
      outputs = []
      for rows, positions, steps in batches.of_epoch(epoch):
        size = rows.shape[1]
        loaded = self.data.batches(
          self.data.split.database[rows.reshape(-1)], size, train=True, seed=(*seed, size)
        )
        for start in range(0, len(rows), config.stream_chunk):
          chunk = slice(start, start + config.stream_chunk)
          indices = sharding.replicate((rows[chunk], positions[chunk], steps[chunk]), mesh)
          images = np.stack([next(loaded)["image"] for _ in range(len(rows[chunk]))])
          state, buffers, metrics = self._chunk(
            state, buffers, self._labels, *indices, key, sharding.shard_batches(mesh, images)
          )
          outputs.append(metrics)
      per_epoch.append(
        {k: np.concatenate([sharding.to_host(m[k]) for m in outputs]) for k in outputs[0]}
      )
    step_losses = {k: np.stack([e[k] for e in per_epoch]) for k in per_epoch[0]}
    codes = self._dcc(
      state.database_codes,
      *sharding.replicate(
        (
          sample,
          self._database_labels,
          r,
          buffers,
          dcc.hyper(self.config, state.database_codes.dtype),
        ),
        mesh,
      ),
    )
    return state.replace(database_codes=codes), step_losses


def check_finite(step_losses, iteration):
  """Raises FloatingPointError naming the first non-finite loss term (epoch, step)."""
  first = None
  for name, values in step_losses.items():
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
      epoch, step = bad[0]
      if first is None or (epoch, step) < first[:2]:
        first = (epoch, step, name, values[epoch, step])
  if first is not None:
    epoch, step, name, value = first
    raise FloatingPointError(
      f"loss term {name} = {value} at iteration {iteration}, epoch {epoch}, step {step}; "
      "the run stops here and keeps the last good checkpoint"
    )
