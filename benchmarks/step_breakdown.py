"""Where a training step's time goes, against the machine's float32 matmul rate.

    python -m benchmarks.step_breakdown [--batch_size=128] [--bits=32]

For each variant (Fashion-MNIST config, small CNN) it times, at the config's
batch, each as its own jitted program (best of --repeats after a warm-up):

- step: the whole training step (`Pieces.step_functions`'s train_step), and its
  two updates apart: the cycle update (the whole model forward and backward, Adam)
  and, for tomm, the adversarial update (the whole model forward again, one
  discriminator step, one generator step over the cycle part);
- visual: the visual network's forward and backward pass alone (backbone and
  hash layer: what the step spends on images);
- cycle: the cycle part's forward and backward pass alone (latent space and the
  two reconstructions, dense layers: what the step spends on the semantic cycle);

and prints each one's XLA FLOP count (`cost_analysis`), its time as a share of the
step's, and the fraction of the matmul rate (2048x2048, the same measure as
benchmarks/train_loop.py) it reaches. Run it on a quiet machine.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.train_loop import matmul_rate
from configs import fashion_mnist
from schn_jax.models import SCHN
from schn_jax.training import loop


def timed(function, args, repeats):
  """(best seconds, XLA FLOPs) of the jitted `function` on `args`."""
  compiled = jax.jit(function).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  jax.block_until_ready(compiled(*args))
  best = float("inf")
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - started)
  return best, cost["flops"]


def programs(config, batch):
  """{name: (function, args)} of the step and of its two parts."""
  bits, classes = config.code_lengths[0], 10
  pieces, state = loop.build(config, bits, (28, 28, 1), classes, 4 * batch)
  model = pieces.model
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, 28, 28, 1)), jnp.float32)
  labels = jnp.asarray(np.eye(classes)[rng.integers(0, classes, batch)], jnp.float32)
  adjacency = (labels @ labels.T > 0).astype(jnp.float32)
  cycle_update, adversarial_update, train_step = pieces.step_functions()
  inputs = {"images": images, "labels": labels, "database_codes": jnp.ones((batch, bits))}
  params, batch_stats = state.params, state.batch_stats
  key = jax.random.key(0)

  def visual(visual_params):
    variables = {"params": {**params, "visual": visual_params}, "batch_stats": batch_stats}
    return model.apply(variables, images, method=SCHN.encode_images).sum()

  features = model.apply({"params": params}, images, labels, adjacency)

  def cycle(cycle_params):
    out = model.apply(
      {"params": {**params, "cycle": cycle_params}},
      features["F_image"],
      features["F_label"],
      adjacency,
      True,
      method=lambda module, *a: module.cycle(*a),
      rngs={"dropout": key},
    )
    return sum(v.sum() for v in out.values())

  updates = {"cycle update": (cycle_update, (state, inputs, key))}
  if config.variant == "tomm":
    updates["adversarial update"] = (adversarial_update, (state, inputs, key))
  return {
    "step": (train_step, (state, inputs, key)),
    **updates,
    "visual": (jax.grad(visual), (params["visual"],)),
    "cycle": (jax.grad(cycle), (params["cycle"],)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
  parser.add_argument("--bits", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--variants", default="mmasia,tomm")
  args = parser.parse_args()
  config = fashion_mnist.get_config()
  config.code_lengths = (args.bits,)
  batch = args.batch_size or config.batch_size
  peak = matmul_rate()
  print(
    f"small CNN, {args.bits} bits, batch {batch}, {jax.devices()[0].platform}; "
    f"float32 matmul rate {peak / 1e9:,.1f} GFLOP/s"
  )
  for variant in args.variants.split(","):
    config.variant = variant
    results = {
      name: timed(function, inputs, args.repeats)
      for name, (function, inputs) in programs(config, batch).items()
    }
    step_seconds = results["step"][0]
    for name, (seconds, flops) in results.items():
      print(
        f"{variant:7s} {name:18s} {flops / batch / 1e6:8.1f} MFLOP/image "
        f"{seconds / step_seconds:7.1%} of the step's time "
        f"{flops / seconds / peak:7.1%} of the matmul rate"
      )


if __name__ == "__main__":
  main()
