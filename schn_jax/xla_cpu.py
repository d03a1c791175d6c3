"""XLA:CPU's kernel choice for float32: accurate dots and convolutions by default.

This jaxlib routes float32 dots, convolutions and some fusions on CPUs to
YNNPACK. On CPUs without AVX-512 its dot accumulates in a way that loses about
three times more than Eigen, numpy or torch (1.4e-6 against 5e-7 of the largest
value at 256x3136 @ 3136x512), enough to move a float32 training run away from
torch's on the reference fixtures; its convolutions were also slower there
(docs/performance.md, "float32 on CPUs", has the measurements and the CPUs).
Importing schn_jax therefore turns the YNNPACK fusions off, through XLA_FLAGS,
before JAX starts its CPU backend:

- only for jaxlib releases known to accept the flag (an unknown XLA flag aborts
  the process at backend start);
- never over the user's own choice: an XLA_FLAGS that already names the flag wins;
- not after JAX's backends have started (the flag would no longer apply): then
  it warns once and leaves things as they are.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# The value that enables no YNNPACK fusion type (the flag's list overwrites the default).
ACCURATE = f"{YNN_FLAG}="
# jaxlib releases whose XLA:CPU has the flag (checked by tests/test_cpu_numerics.py).
KNOWN_JAXLIB = ("0.10.2",)


def use_accurate_kernels():
  """Adds ACCURATE to XLA_FLAGS when allowed (module doc); returns what was decided."""
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags:
    return "user's XLA_FLAGS"
  if jaxlib.version.__version__ not in KNOWN_JAXLIB:
    return f"jaxlib {jaxlib.version.__version__} not known to accept {YNN_FLAG}"
  if jax._src.xla_bridge.backends_are_initialized():  # no public API says this
    warnings.warn(
      f"JAX's backends started before schn_jax was imported, so {ACCURATE} (accurate "
      "float32 kernels on CPUs) does not apply; import schn_jax first or set XLA_FLAGS",
      stacklevel=3,
    )
    return "backends already started"
  os.environ["XLA_FLAGS"] = f"{flags} {ACCURATE}".strip()
  return "set"


# ---------------------------------------------------------------- measuring it

# The project's own float32 products at their own shapes (small CNN at batch 128 on
# 28x28 images; its fc6 and the cycle part's dense layers; AlexNet's fc6 at batch 64):
# name -> (batch, height, width, in channels, kernel, out channels) for convolutions,
# (rows, inner, columns) for dots.
CONVOLUTIONS = {
  "small CNN conv1": (128, 28, 28, 1, 3, 32),
  "small CNN conv2": (128, 14, 14, 32, 3, 64),
}
DOTS = {
  "small CNN fc6": (128, 3136, 512),
  "cycle dense": (128, 1024, 512),
  "AlexNet fc6": (64, 9216, 4096),
}


def _relative(value, exact):
  return float(np.max(np.abs(np.asarray(value, np.float64) - exact)) / np.max(np.abs(exact)))


def float32_errors(seed=0):
  """{op: (JAX's float32 error, BLAS float32 error)}, each the largest difference from
  the float64 result over the largest magnitude of that result.

  The BLAS column is numpy's float32 matmul (OpenBLAS, accumulating as torch's CPU
  kernels do) of the same products: a convolution as its patches times its kernel,
  the patches being exact copies of input values. A kernel that rounds as finely as
  BLAS has a ratio near 1.
  """
  # Imported here: this module runs when schn_jax is first imported, before the models.
  from schn_jax.models.conv import conv2d

  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  results = {}
  for name, (rows, inner, columns) in DOTS.items():
    a, b = normal(rows, inner), normal(inner, columns)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    results[name] = (_relative(jax.jit(jnp.dot)(a, b), exact), _relative(a @ b, exact))
  for name, (batch, height, width, channels, k, features) in CONVOLUTIONS.items():
    x, w, dy = normal(batch, height, width, channels), normal(k, k, channels, features), None
    padding = ((k // 2, k // 2), (k // 2, k // 2))
    patches = np.asarray(
      jax.lax.conv_general_dilated_patches(
        x, (k, k), (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
    ).reshape(-1, channels * k * k)
    # conv_general_dilated_patches orders a patch (channel, kh, kw).
    w_matrix = np.transpose(w, (2, 0, 1, 3)).reshape(channels * k * k, features)
    exact = (patches.astype(np.float64) @ w_matrix.astype(np.float64)).reshape(
      batch, height, width, features
    )
    forward = jax.jit(lambda x, w: conv2d(x, w, (1, 1), padding))
    results[name] = (
      _relative(forward(x, w), exact),
      _relative((patches @ w_matrix).reshape(exact.shape), exact),
    )
    dy = normal(batch, height, width, features)
    _, vjp = jax.vjp(lambda w: conv2d(x, w, (1, 1), padding), w)
    exact = patches.astype(np.float64).T @ dy.reshape(-1, features).astype(np.float64)
    ours = np.transpose(np.asarray(jax.jit(vjp)(dy)[0]), (2, 0, 1, 3)).reshape(exact.shape)
    results[f"{name} kernel gradient"] = (
      _relative(ours, exact),
      _relative(patches.T @ dy.reshape(-1, features), exact),
    )
  return results
