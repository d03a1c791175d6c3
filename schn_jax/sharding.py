"""The mesh and host<->device transfers, for training, inference, parity and benchmarks.

One ('data',) mesh of every device of every process; the per-device step is mapped
over it here.

The step (`step.make_step_functions(..., axis_name=DATA_AXIS)`) is written once
with named-axis collectives and mapped here with `jax.shard_map` inside
`jax.jit`: the state and the rng are replicated (P()), the batch is split along
its rows (P('data')), and the outputs (state, the global batch's codes,
metrics) are replicated.

Global arrays: on several processes each one loads only its own rows of every
batch (`data.pipeline.host_slice`); `shard_rows` stitches those into one
global array, and `replicate` turns values that every process holds equally
(the initial state, DCC inputs) into arrays replicated on every device.
"""

import functools

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None):
  """`devices` (default: all of them) on one 'data' axis, each process's devices
  adjacent and in process order, so that process p's rows of a global batch are
  the contiguous block `data.pipeline.host_slice` gives it."""
  devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
  # Auto axis types: the rest of the code (DCC, evaluation, optax) is written for
  # jit's sharding propagation, not for explicitly typed shardings.
  return jax.make_mesh(
    (len(devices),), (DATA_AXIS,), devices=devices, axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh):
  return NamedSharding(mesh, P())


def replicate(tree, mesh):
  """Values equal on every process -> global arrays with a full copy on every device."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree_util.tree_map(put, tree)


def shard_rows(mesh, *local_arrays):
  """This process's contiguous rows of a global batch -> global arrays split over 'data'."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return tuple(
    jax.make_array_from_process_local_data(sharding, np.asarray(x)) for x in local_arrays
  )


def to_host(x):
  """A global array as one NumPy array on every process (gathered across hosts)."""
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def shard_batches(mesh, local_batches):
  """This process's rows of a stack of global batches (k, b, ...) -> a global
  (k, B, ...) array split over 'data' along axis 1."""
  local_batches = np.asarray(local_batches)
  global_shape = (
    local_batches.shape[0],
    local_batches.shape[1] * jax.process_count(),
    *local_batches.shape[2:],
  )
  return jax.make_array_from_process_local_data(
    NamedSharding(mesh, P(None, DATA_AXIS)), local_batches, global_shape
  )


def map_replicated(per_device, mesh, sharded=(), axis=1, donate=()):
  """Maps per_device(*args) over every device of `mesh` with shard_map.

  Arguments are replicated global arrays, except those whose positions are in
  `sharded`: split over the devices along `axis` (0: one global batch, see
  `shard_rows`; 1: a stack of batches, see `shard_batches`). Every output must be
  equal on every device (the step makes it so) and is returned replicated.
  """
  split = P(*([None] * axis), DATA_AXIS)

  @functools.partial(jax.jit, donate_argnums=donate)
  def mapped(*args):
    # check_vma=False: the step follows the explicit-collective convention
    # (per-device gradients of loss / n, then psum). With varying-axes typing
    # JAX would already sum the gradients of replicated parameters when
    # transposing their implicit pvary, and the step's psum would count them
    # n times. The outputs are equal on every device by construction (global
    # batch after the all-gather, psum'd gradients), so P() is exact.
    specs = tuple(split if i in sharded else P() for i in range(len(args)))
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False)(
      *args
    )

  return mapped


def map_step(per_device_step, mesh, num_rows):
  """Maps per_device_step(state, *rows, rng) -> replicated outputs over `mesh`: the
  `num_rows` arguments after the state are global batches split along their rows
  (see `shard_rows`); the state is donated."""
  return map_replicated(
    per_device_step, mesh, sharded=tuple(range(1, num_rows + 1)), axis=0, donate=(0,)
  )
