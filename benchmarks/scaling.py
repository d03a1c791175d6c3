"""Step time and memory of the data-parallel SCHN step vs device count and batch size.

    python benchmarks/scaling.py                        # simulated CPU devices 1, 2, 4, 8
    python benchmarks/scaling.py --devices=8 --batches=64,128,256
    python benchmarks/scaling.py --devices=4 --processes=2  # 2 processes x 2 devices, gloo on 127.0.0.1

Each configuration runs in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=N (the device count is fixed
when JAX starts). Reported: median step time after compilation, and the
compiled step's per-device memory (XLA's memory analysis: arguments + outputs +
temporaries, which is what bounds the batch on a real accelerator). Simulated
devices share the host's cores, so time here measures the work added by
splitting, not the speed-up of real hardware.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(variant, backbone, image_size, batch_size, bits, classes, steps, process=None):
  """`process`: (coordinator, count, id) to join a multi-process run first."""
  import jax

  if process:
    jax.distributed.initialize(*process)
  import jax.numpy as jnp
  import numpy as np

  from schn_jax import sharding
  from schn_jax.models import SCHN, Discriminator
  from schn_jax.training.state import (
    create_state,
    make_optimizers,
  )
  from schn_jax.training.step import (
    StepConfig,
    make_step_functions,
  )

  model, discriminator = SCHN(variant, bits, backbone=backbone), Discriminator()
  key = jax.random.key(0)
  shape = (image_size, image_size, 1 if backbone == "small_cnn" else 3)
  params = model.init(key, jnp.zeros((2,) + shape), jnp.zeros((2, classes)), jnp.ones((2, 2)))[
    "params"
  ]
  disc_params = (
    discriminator.init(key, jnp.zeros((2, bits)), jnp.zeros((2, bits)))["params"]
    if variant == "tomm"
    else {}
  )
  from configs import default

  config = default.base_config("fashion_mnist")
  config.variant = variant
  optimizers = make_optimizers(config.weight_decay, config.optimizer_semantics, params["cycle"])
  _, _, train_step = make_step_functions(
    model, discriminator, optimizers, StepConfig.from_config(config), axis_name=sharding.DATA_AXIS
  )

  def per_device(state, images, labels, rows, rng):
    batch = {"images": images, "labels": labels, "database_codes": state.database_codes[rows]}
    return train_step(state, batch, rng)

  mesh = sharding.make_mesh()
  step = sharding.map_step(per_device, mesh, num_rows=3)
  data = np.random.default_rng(0)
  batch = (
    data.normal(size=(batch_size,) + shape).astype(np.float32),
    (data.random((batch_size, classes)) < 0.3).astype(np.float32),
    np.arange(batch_size, dtype=np.int32),
  )
  mine = slice(
    jax.process_index() * batch_size // jax.process_count(),
    (jax.process_index() + 1) * batch_size // jax.process_count(),
  )
  rows = sharding.shard_rows(mesh, *(x[mine] for x in batch))
  state = sharding.replicate(
    create_state(params, disc_params, optimizers, batch_size, bits, key), mesh
  )
  rng = sharding.replicate(key, mesh)
  memory = step.lower(state, *rows, rng).compile().memory_analysis()
  state = jax.block_until_ready(step(state, *rows, rng))[0]
  times = []
  for _ in range(steps):
    started = time.perf_counter()
    state = jax.block_until_ready(step(state, *rows, rng))[0]
    times.append(time.perf_counter() - started)
  mib = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  ) / 2**20
  return {
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "batch": batch_size,
    "step_ms": 1000 * statistics.median(times),
    "per_device_MiB": mib,
    "temp_MiB": memory.temp_size_in_bytes / 2**20,
  }


def _child_outputs(args, devices, batch):
  """Runs one configuration in fresh processes; returns process 0's stdout."""
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // args.processes}",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
  )
  command = [
    sys.executable,
    __file__,
    "--child",
    f"--batches={batch}",
    f"--variant={args.variant}",
    f"--backbone={args.backbone}",
    f"--image_size={args.image_size}",
    f"--bits={args.bits}",
    f"--classes={args.classes}",
    f"--steps={args.steps}",
    f"--processes={args.processes}",
  ]
  if args.processes > 1:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      command.append(f"--coordinator=127.0.0.1:{s.getsockname()[1]}")
  children = [
    subprocess.Popen(
      command + [f"--process_id={i}"],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(args.processes)
  ]
  outputs = [child.communicate() for child in children]
  for child, (_, err) in zip(children, outputs):
    if child.returncode:
      raise SystemExit(f"devices={devices} batch={batch} failed:\n{err[-3000:]}")
  return outputs[0][0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", default="1,2,4,8", help="total devices, over all processes")
  parser.add_argument("--batches", default="64,128")
  parser.add_argument("--processes", type=int, default=1)
  parser.add_argument("--variant", default="tomm")
  parser.add_argument("--backbone", default="small_cnn")
  parser.add_argument("--image_size", type=int, default=28)
  parser.add_argument("--bits", type=int, default=32)
  parser.add_argument("--classes", type=int, default=10)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--coordinator", help=argparse.SUPPRESS)
  parser.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    process = (args.coordinator, args.processes, args.process_id) if args.processes > 1 else None
    print(
      json.dumps(
        measure(
          args.variant,
          args.backbone,
          args.image_size,
          int(args.batches),
          args.bits,
          args.classes,
          args.steps,
          process,
        )
      )
    )
    return
  print(
    f"{args.variant}, {args.backbone} {args.image_size}x{args.image_size}, {args.bits} bits; "
    f"simulated CPU devices in {args.processes} process(es) on {os.cpu_count()} cores"
  )
  print(
    f"{'devices':>7} {'procs':>5} {'batch':>5} {'step ms':>9} {'MiB/device':>10} {'temp MiB':>9}"
  )
  for devices in map(int, args.devices.split(",")):
    if devices % args.processes:
      raise SystemExit(f"--devices={devices} is not a multiple of --processes={args.processes}")
    for batch in map(int, args.batches.split(",")):
      r = json.loads(_child_outputs(args, devices, batch).strip().splitlines()[-1])
      print(
        f"{r['devices']:>7} {r['processes']:>5} {r['batch']:>5} {r['step_ms']:>9.1f} "
        f"{r['per_device_MiB']:>10.1f} {r['temp_MiB']:>9.1f}",
        flush=True,
      )


if __name__ == "__main__":
  main()
