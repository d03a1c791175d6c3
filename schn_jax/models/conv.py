"""A 2-D convolution whose gradients XLA:CPU runs fast inside loops.

XLA:CPU hands a convolution to its fast (Eigen) kernel only when the operands
are in the canonical NHWC / HWIO layout. Outside loops it rewrites the two
gradient convolutions that autodiff produces (kernel gradient: batch and
feature dimensions swapped; input gradient: kernel flipped and transposed)
into that layout; inside a `lax.scan` or `fori_loop` body it does not, and they
fall back to a generic loop: a 3x3 convolution's gradients at batch 128 ran
about 25x slower (docs/performance.md). This module writes both
gradients as canonical convolutions of explicitly transposed operands, pinned
with `optimization_barrier` so that XLA cannot fold the transposes back into
the convolution. The numbers are those of the autodiff gradients up to the
order of the sums (tests/test_conv.py).
"""

import functools

import jax
import jax.numpy as jnp

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, padding, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
  return jax.lax.conv_general_dilated(
    x,
    w,
    strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=DIMENSIONS,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, strides, padding):
  """NHWC `x` convolved with HWIO `w`; strides (sh, sw), padding ((lo, hi), (lo, hi))."""
  return _conv(x, w, strides, padding)


def _forward(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _backward(strides, padding, residuals, dy):
  x, w = residuals
  kernel, image, out = w.shape[:2], x.shape[1:3], dy.shape[1:3]
  # Kernel gradient: (Cin, H, W, B) convolved with (OH, OW, B, Cout) dilated by the
  # stride gives (Cin, KH, KW, Cout); the high padding crops rows no output reached.
  x_t = jax.lax.optimization_barrier(jnp.transpose(x, (3, 1, 2, 0)))
  dy_t = jax.lax.optimization_barrier(jnp.transpose(dy, (1, 2, 0, 3)))
  pads = tuple(
    (lo, k + s * (o - 1) - n - lo)
    for (lo, _), k, s, o, n in zip(padding, kernel, strides, out, image)
  )
  dw = jnp.transpose(_conv(x_t, dy_t, (1, 1), pads, rhs_dilation=strides), (1, 2, 0, 3))
  # Input gradient: dy dilated by the stride, convolved with the flipped kernel, its
  # in and out features swapped.
  w_t = jax.lax.optimization_barrier(jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2)))
  pads = tuple(
    (k - 1 - lo, n + k - 2 - s * (o - 1) - (k - 1 - lo))
    for (lo, _), k, s, o, n in zip(padding, kernel, strides, out, image)
  )
  dx = _conv(dy, w_t, (1, 1), pads, lhs_dilation=strides)
  return dx, dw


conv2d.defvjp(_forward, _backward)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
):
  """`lax.conv_general_dilated`'s signature, for nn.Conv(conv_general_dilated=...):
  2-D NHWC/HWIO convolutions without dilation or groups, explicit padding."""
  for name, dilation in (("lhs", lhs_dilation), ("rhs", rhs_dilation)):
    if dilation is not None and tuple(dilation) != (1, 1):
      raise NotImplementedError(f"{name}_dilation {dilation}")
  if feature_group_count != 1 or isinstance(padding, str):
    raise NotImplementedError("feature groups or string padding")
  return conv2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding))
