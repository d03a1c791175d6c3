"""XLA:CPU's kernel choice for float32 on CPUs without AVX-512.

This jaxlib routes float32 dots, convolutions and some fusions on CPUs to
YNNPACK. Measured against float64 and against torch's float32 runs
(docs/performance.md, "float32 on CPUs"; `float32_errors` below,
`python -m benchmarks.cpu_numerics`):

- on CPUs without AVX-512, YNNPACK's dots lose 2.6-4.5x more than BLAS (numpy,
  torch) at this project's shapes, enough to move float32 training off torch's
  within an iteration, and its convolutions ran AlexNet's step slower than
  Eigen's: there every YNNPACK fusion is turned off;
- on AVX-512 CPUs its dots lose at most 1.4x what BLAS does, and with YNNPACK on
  our float32 trajectories track torch's best (turning its convolutions off made
  them leave torch's run in the first iterations): there jaxlib's default stays.

Importing schn_jax sets this through XLA_FLAGS before JAX starts its CPU backend:

- only for jaxlib releases known to accept the flag (an unknown XLA flag aborts
  the process at backend start);
- never over the user's own choice: an XLA_FLAGS that already names the flag wins;
- not after JAX's backends have started (the flag would no longer apply): then
  it warns and leaves things as they are.
"""

import os
import warnings

import jax
import jax.numpy as jnp
import jaxlib.version
import numpy as np

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# Every YNNPACK fusion off: the flag's value is the list of types to enable.
WITHOUT_AVX512 = f"{YNN_FLAG}="
# jaxlib releases whose XLA:CPU has the flag (checked by tests/test_cpu_numerics.py).
KNOWN_JAXLIB = ("0.10.2",)


def has_avx512():
  """Whether this CPU has AVX-512F, read from CPUID by numpy (so an emulated CPU counts)."""
  features = getattr(np._core._multiarray_umath, "__cpu_features__", {})
  return bool(features.get("AVX512F", False))


def accurate_flag():
  """The XLA flag this CPU needs for accurate float32, or None for jaxlib's default."""
  return None if has_avx512() else WITHOUT_AVX512


def use_accurate_kernels():
  """Adds `accurate_flag()` to XLA_FLAGS when needed and allowed (module doc); returns
  what was decided."""
  flags, flag = os.environ.get("XLA_FLAGS", ""), accurate_flag()
  if YNN_FLAG in flags:
    return "user's XLA_FLAGS"
  if flag is None:
    return "AVX-512: jaxlib's default"
  if jaxlib.version.__version__ not in KNOWN_JAXLIB:
    return f"jaxlib {jaxlib.version.__version__} not known to accept {YNN_FLAG}"
  if jax._src.xla_bridge.backends_are_initialized():  # no public API says this
    warnings.warn(
      f"JAX's backends started before schn_jax was imported, so {flag} (accurate "
      "float32 kernels on this CPU) does not apply; import schn_jax first or set XLA_FLAGS",
      stacklevel=3,
    )
    return "backends already started"
  os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
  return "set"


# ---------------------------------------------------------------- measuring it

# The project's own float32 products at their own shapes: the small CNN at batch 128 on
# 28x28 images, AlexNet at batch 12 on 64x64 images (the trajectory fixtures' shapes),
# the small CNN's fc6, the cycle part's dense layers and AlexNet's fc6.
# Convolutions: name -> (batch, height, width, in channels, kernel, stride, padding,
# out channels); dots: name -> (rows, inner, columns).
CONVOLUTIONS = {
  "small CNN conv1": (128, 28, 28, 1, 3, 1, 1, 32),
  "small CNN conv2": (128, 14, 14, 32, 3, 1, 1, 64),
  "AlexNet conv1": (12, 64, 64, 3, 11, 4, 2, 64),
  "AlexNet conv2": (12, 7, 7, 64, 5, 1, 2, 192),
  "AlexNet conv3": (12, 3, 3, 192, 3, 1, 1, 384),
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
  kernels do) of the same products. A convolution is its patches times its kernel
  (the patches are exact copies of input values); its kernel gradient the patches'
  transpose times the output gradient; its input gradient the patches of the
  dilated, padded output gradient times the flipped, transposed kernel. A kernel that
  rounds as finely as BLAS has a ratio near 1.
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
  for name, (batch, height, width, channels, k, stride, pad, features) in CONVOLUTIONS.items():
    x, w = normal(batch, height, width, channels), normal(k, k, channels, features)
    strides, padding = (stride, stride), ((pad, pad), (pad, pad))

    def patches_of(image):
      # A patch is ordered (channel, kh, kw).
      return jax.lax.conv_general_dilated_patches(
        image, (k, k), strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
      )

    patches = patches_of(x)
    out_shape = patches.shape[:3] + (features,)
    patches = np.asarray(patches).reshape(-1, channels * k * k)
    w_matrix = np.transpose(w, (2, 0, 1, 3)).reshape(channels * k * k, features)
    f64 = lambda a: a.astype(np.float64)
    exact = (f64(patches) @ f64(w_matrix)).reshape(out_shape)
    blas = (patches.astype(np.float32) @ w_matrix).reshape(out_shape)
    ours, vjp = jax.vjp(lambda x, w: conv2d(x, w, strides, padding), x, w)
    results[name] = (_relative(ours, exact), _relative(blas, exact))
    dy = normal(*out_shape)
    dx, dw = jax.jit(vjp)(dy)
    dy_rows = dy.reshape(-1, features)
    exact = f64(patches).T @ f64(dy_rows)
    dw = np.transpose(np.asarray(dw), (2, 0, 1, 3)).reshape(exact.shape)
    blas = patches.astype(np.float32).T @ dy_rows
    results[f"{name} kernel gradient"] = (_relative(dw, exact), _relative(blas, exact))
    # The input gradient is a stride-1 convolution of the output gradient, dilated by
    # the stride and padded back to the image, with the flipped, transposed kernel:
    # as patches times a matrix it sums as many terms as the convolution does.
    low = k - 1 - pad
    high = height - 1 - (out_shape[1] - 1) * stride + pad
    dy_patches = np.asarray(
      jax.lax.conv_general_dilated_patches(
        dy,
        (k, k),
        (1, 1),
        ((low, high), (low, high)),
        lhs_dilation=strides,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    ).reshape(-1, features * k * k)
    flipped = np.transpose(w[::-1, ::-1], (3, 0, 1, 2)).reshape(features * k * k, channels)
    exact = (f64(dy_patches) @ f64(flipped)).reshape(x.shape)
    blas = (dy_patches @ flipped).reshape(x.shape)
    results[f"{name} input gradient"] = (_relative(dx, exact), _relative(blas, exact))
  return results
