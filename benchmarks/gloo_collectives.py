"""XLA:CPU gloo collectives: a reduce-scatter followed by an all-reduce crawls.

    python benchmarks/gloo_collectives.py [--devices_per_process=2] [--megabytes=20]

Starts 2 processes on 127.0.0.1, each with `--devices_per_process` simulated
CPU devices, and times three jitted shard_map programs over all devices. Each
does one small collective on a (devices x 8, 1024) array, then a psum of a
replicated `--megabytes` array:

  all_gather + psum       small all_gather first
  psum + psum             small psum first
  psum_scatter + psum     small reduce-scatter first

Nothing here uses schn_jax. On jax 0.10.2 at 20 MB, the third took 19 s per
call with 2 devices per process (the others 0.1 s), and 0.34 s with 1 device
per process (the others 0.05 s). This is why `training/step.py` gathers rows with a
backward pass that issues no reduce-scatter (docs/scaling.md).
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

PROGRAMS = ("all_gather", "psum", "psum_scatter")


def child(coordinator, process_id, megabytes):
  import jax
  import numpy as np
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from schn_jax import sharding

  jax.distributed.initialize(coordinator, 2, process_id)
  mesh = sharding.make_mesh()
  put = lambda x, spec: jax.make_array_from_process_local_data(NamedSharding(mesh, spec), x)
  big = put(np.full((megabytes * 256, 1024), 1e-3, np.float32), P())
  rows = put(np.ones((8 * len(jax.local_devices()), 1024), np.float32), P("data"))

  def program(first):
    def per_device(big, x):
      n = jax.lax.axis_size("data")
      small = {
        "all_gather": lambda: jax.lax.all_gather(x, "data", tiled=True),
        "psum": lambda: jax.lax.psum(x, "data"),
        "psum_scatter": lambda: jax.lax.psum_scatter(jax.numpy.tile(x, (n, 1)), "data", tiled=True),
      }[first]()
      return jax.lax.psum(big * small.sum(), "data")

    return jax.jit(
      jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P("data")), out_specs=P(), check_vma=False
      )
    )

  for first in PROGRAMS:
    step = program(first)
    jax.block_until_ready(step(big, rows))
    times = []
    for _ in range(3):
      started = time.perf_counter()
      jax.block_until_ready(step(big, rows))
      times.append(time.perf_counter() - started)
    if process_id == 0:
      print(f"{first + ' + psum':>22}: {statistics.median(times):8.3f} s per call", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices_per_process", type=int, default=2)
  parser.add_argument("--megabytes", type=int, default=20)
  parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.child[0], int(args.child[1]), args.megabytes)
    return
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    coordinator = f"127.0.0.1:{s.getsockname()[1]}"
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}",
  )
  print(
    f"2 processes x {args.devices_per_process} devices, psum of {args.megabytes} MB", flush=True
  )
  children = [
    subprocess.Popen(
      [sys.executable, __file__, f"--megabytes={args.megabytes}", "--child", coordinator, str(i)],
      env=env,
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
    )
    for i in range(2)
  ]
  outputs = [c.communicate()[0] for c in children]
  for i, c in enumerate(children):
    if c.returncode:
      raise SystemExit(f"process {i} exited with {c.returncode}")
  # gloo's C++ logging shares stdout; keep only the timings.
  print("\n".join(line for line in outputs[0].splitlines() if line.endswith("per call")))


if __name__ == "__main__":
  main()
