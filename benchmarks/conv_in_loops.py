"""A convolution's gradients in and out of a loop: autodiff's against models/conv.py's.

    python -m benchmarks.conv_in_loops [--batch=128] [--reps=3]

Ten gradient steps of one 3x3 convolution (the small CNN's second layer: 14x14x32 ->
64, both gradients, SGD on input and kernel), run as ten calls of a jitted step and
as one jitted `lax.scan` of ten steps. On XLA:CPU autodiff's gradient convolutions
are slow inside the loop; models/conv.py writes them so they are not
(docs/performance.md). Prints the median of --reps timings of each.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from schn_jax.models.conv import conv2d

STEPS = 10


def autodiff_conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def our_conv(x, w):
  return conv2d(x, w, (1, 1), ((1, 1), (1, 1)))


def programs(conv):
  grad = jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w))), argnums=(0, 1))

  def step(carry):
    x, w = carry
    gx, gw = grad(x, w)
    return x - 1e-3 * gx, w - 1e-3 * gw

  one = jax.jit(step)

  def calls(carry):
    for _ in range(STEPS):
      carry = one(carry)
    return carry

  scan = jax.jit(lambda carry: jax.lax.scan(lambda c, _: (step(c), None), carry, length=STEPS)[0])
  return {"10 calls": calls, "one scan of 10": scan}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args()
  keys = jax.random.split(jax.random.key(0))
  carry = (
    jax.random.normal(keys[0], (args.batch, 14, 14, 32)),
    0.1 * jax.random.normal(keys[1], (3, 3, 32, 64)),
  )
  print(f"{STEPS} gradient steps of a 3x3 convolution, batch {args.batch}, {jax.devices()[0]}")
  for name, conv in (("autodiff", autodiff_conv), ("models/conv.py", our_conv)):
    for kind, program in programs(conv).items():
      jax.block_until_ready(program(carry))  # compilation
      seconds = []
      for _ in range(args.reps):
        started = time.perf_counter()
        jax.block_until_ready(program(carry))
        seconds.append(time.perf_counter() - started)
      print(f"{name:15s} {kind:15s} {1e3 * statistics.median(seconds):8.1f} ms")


if __name__ == "__main__":
  main()
