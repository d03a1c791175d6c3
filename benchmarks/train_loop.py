"""Images/s of the whole training loop: the former per-batch loop beside the compiled one.

    python -m benchmarks.train_loop                       # Fashion-MNIST, small CNN, both variants
    python -m benchmarks.train_loop --iterations=3 --sample_size=5120

Both loops train the same model on the same Fashion-MNIST batches (configs/
fashion_mnist.py, one code length) from the same state, for --iterations outer
iterations after one warm-up iteration that absorbs compilation:

- per-batch: the loop as it was before the compiled iteration (kept here only as
  the baseline): for every batch the host gathers the images, puts them on the
  device, runs the jitted step, and brings the losses (for the NaN check) and the
  sample's codes back to the host; DCC runs at the end of the iteration;
- scan: `training.loop.Iteration`, the loop train.py runs: the whole iteration
  in one program (lax.scan); images are gathered on device and the host syncs
  once per iteration.

Prints one line per (variant, loop) with images/s and the ratio, and the input
pipeline alone (host gather of the same batches) for scale. For a figure that
carries between machines it also measures this machine's float32 matmul rate
(a 2048x2048 product, best of 5) and XLA's FLOP count of one training step
(`compiled.cost_analysis()`, per image), and prints the fraction of the matmul
rate the loop reaches: images/s x FLOP/image / matmul FLOP/s. Run it on a quiet
machine: the figures are wall-clock.
"""

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import fashion_mnist
from schn_jax import data as data_lib
from schn_jax import sharding
from schn_jax.training import dcc as dcc_lib
from schn_jax.training import loop


def per_batch_iteration(config, data, state, step, mesh, dcc):
  """The former loop: one dispatch and two host round trips per batch."""
  pool = loop.training_positions(data.split)
  iteration = int(state.iteration)
  bits = state.database_codes.shape[1]
  sample, orders = loop.plan_iteration(config, pool, bits, iteration)
  database = data.split.database
  labels = data.labels[database]
  codes = {k: np.zeros((len(sample), bits), np.float32) for k in loop.CODE_NAMES}
  key = jax.random.fold_in(state.rng, iteration)
  steps = 0
  for order in orders:
    for start in range(0, len(order), config.batch_size):
      positions = order[start : start + config.batch_size]
      (batch,) = data.batches(database[sample[positions]], len(positions), train=True, seed=0)
      state, batch_codes, metrics = step(
        state,
        batch["image"],
        batch["label"],
        sample[positions].astype(np.int32),
        jax.random.fold_in(key, steps),
      )
      for name, value in metrics.items():
        if not np.isfinite(sharding.to_host(value)):
          raise FloatingPointError(name)
      for name, value in batch_codes.items():
        codes[name][positions] = sharding.to_host(value)
      steps += 1
  r = np.float32(dcc_lib.positive_ratio(labels[sample], labels))
  database_codes = dcc(
    state.database_codes,
    *sharding.replicate(
      (
        sample.astype(np.int32),
        labels,
        r,
        codes,
        {k: np.float32(config[k]) for k in ("alpha", "beta", "gamma")},
      ),
      mesh,
    ),
  )
  return state.replace(database_codes=database_codes, iteration=state.iteration + 1)


def make_per_batch_step(config, data, pieces, mesh):
  _, _, train_step = pieces.step_functions(sharding.DATA_AXIS)

  def per_device(state, images, labels, rows, rng):
    batch = {
      "images": data.normalize(images),
      "labels": labels,
      "database_codes": state.database_codes[rows],
    }
    return train_step(state, batch, rng)

  mapped = sharding.map_step(per_device, mesh, num_rows=3)
  return lambda state, images, labels, rows, rng: mapped(
    state, *sharding.shard_rows(mesh, images, labels, rows), sharding.replicate(rng, mesh)
  )


def measure(config, data, kind, iterations):
  """Images/s of `kind`: 'old per-batch', or 'scan' (the compiled loop)."""
  bits = config.code_lengths[0]
  pieces, state = loop.build(
    config, bits, (28, 28, 1), data.source.num_classes, len(data.split.database)
  )
  mesh = sharding.make_mesh()
  state = sharding.replicate(state, mesh)
  if kind == "scan":
    program = loop.Iteration(config, data, pieces, mesh)
    run = lambda state: program(state)[0]
  else:
    step = make_per_batch_step(config, data, pieces, mesh)
    dcc = jax.jit(dcc_lib.update_rows)
    run = lambda state: per_batch_iteration(config, data, state, step, mesh, dcc)
  state = run(state)  # warm-up: compilation
  jax.block_until_ready(state.database_codes)
  started = time.perf_counter()
  for _ in range(iterations):
    state = run(state)
  jax.block_until_ready(state.database_codes)
  return iterations * config.sample_size * config.max_epoch / (time.perf_counter() - started)


def matmul_rate(n=2048, repeats=5):
  """This machine's float32 matmul rate in FLOP/s, as XLA runs an (n, n) @ (n, n) product."""
  a, b = (np.random.default_rng(i).standard_normal((n, n)).astype(np.float32) for i in (0, 1))
  product = jax.jit(jnp.dot)
  a, b = jax.device_put(a), jax.device_put(b)
  product(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    started = time.perf_counter()
    product(a, b).block_until_ready()
    best = min(best, time.perf_counter() - started)
  return 2 * n**3 / best


def step_flops_per_image(config, data):
  """XLA's FLOP count of one training step at the config's batch, per image."""
  bits, batch = config.code_lengths[0], config.batch_size
  pieces, state = loop.build(
    config, bits, (28, 28, 1), data.source.num_classes, len(data.split.database)
  )
  _, _, train_step = pieces.step_functions()
  inputs = {
    "images": jnp.zeros((batch, 28, 28, 1)),
    "labels": jnp.zeros((batch, data.source.num_classes)),
    "database_codes": jnp.zeros((batch, bits)),
  }
  compiled = jax.jit(train_step).lower(state, inputs, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"] / batch


def input_pipeline(config, data):
  """Host-side gather of one iteration's batches, without training."""
  database = data.split.database
  started = time.perf_counter()
  for _ in data.batches(database[: config.sample_size], config.batch_size, train=True, seed=0):
    pass
  return config.sample_size / (time.perf_counter() - started)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--iterations", type=int, default=2)
  parser.add_argument("--sample_size", type=int, default=5120)
  parser.add_argument("--bits", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
  parser.add_argument("--variants", default="mmasia,tomm")
  parser.add_argument("--loops", default="old per-batch,scan")
  args = parser.parse_args()
  config = fashion_mnist.get_config()
  config.code_lengths = (args.bits,)
  config.sample_size = args.sample_size
  config.batch_size = args.batch_size or config.batch_size
  data = data_lib.build_dataset(config.data, tempfile.mkdtemp(), config.seed, split_mode="defer")
  print(
    f"Fashion-MNIST, small CNN, {args.bits} bits, batch {config.batch_size}, sample "
    f"{config.sample_size} x {config.max_epoch} epoch(s), {args.iterations} timed iteration(s) "
    f"after one warm-up, {jax.device_count()} {jax.devices()[0].platform} device(s)"
  )
  print(f"input pipeline alone (host gather): {input_pipeline(config, data):,.0f} images/s")
  peak = matmul_rate()
  print(f"float32 matmul rate (2048x2048, XLA): {peak / 1e9:,.1f} GFLOP/s")
  for variant in args.variants.split(","):
    config.variant = variant
    flops = step_flops_per_image(config, data)
    print(f"{variant}: {flops / 1e6:,.1f} MFLOP per image per step (XLA cost analysis)")
    rates = {kind: measure(config, data, kind, args.iterations) for kind in args.loops.split(",")}
    old = rates.get("old per-batch")
    for kind, rate in rates.items():
      ratio = f"  {rate / old:.2f}x the old loop" if old else ""
      fraction = rate * flops / peak
      print(
        f"{variant:7s} {kind:14s} {rate:8,.0f} images/s  {fraction:6.1%} of the matmul rate{ratio}"
      )


if __name__ == "__main__":
  main()
