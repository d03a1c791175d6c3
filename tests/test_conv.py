"""models/conv.py: its hand-written gradients are autodiff's, in and out of loops.

Under jit XLA may fuse and order the sums differently from autodiff's program, so
the two agree to rounding: relative to the gradient's largest element, 1e-12 in
float64 and 1e-5 in float32 (a wrong padding or flip is off by O(1)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from schn_jax.models.conv import conv2d

# (input shape, kernel, out features, stride, padding): the small CNN's and AlexNet's
# layers (AlexNet's first at a smaller image), plus strides that do not divide evenly.
CASES = [
  ((2, 28, 28, 1), 3, 8, 1, 1),
  ((2, 14, 14, 32), 3, 64, 1, 1),
  ((2, 63, 63, 3), 11, 16, 4, 2),
  ((2, 15, 15, 16), 5, 24, 1, 2),
  ((2, 17, 17, 5), 3, 4, 2, 0),
  ((2, 16, 16, 5), 4, 4, 3, 1),
]


def reference_conv(x, w, stride, padding):
  return jax.lax.conv_general_dilated(
    x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def ours(x, w, stride, padding):
  return conv2d(x, w, (stride, stride), padding)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,kernel,features,stride,pad", CASES)
def test_gradients_equal_autodiff(dtype, shape, kernel, features, stride, pad):
  with jax.enable_x64(dtype == "float64"):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), dtype)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], features)), dtype)
    padding = ((pad, pad), (pad, pad))

    def gradients(conv):
      def loss(x, w):
        return jnp.sum(jnp.tanh(conv(x, w, stride, padding)))

      return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

    def gradients_in_a_loop(conv):
      # The same gradient, computed in a two-step scan (where XLA:CPU lays convolutions
      # out differently) and compared against its first step.
      def step(carry, _):
        return carry, jax.grad(lambda x, w: jnp.sum(jnp.tanh(conv(x, w, stride, padding))), (0, 1))(
          *carry
        )

      return jax.tree.map(
        lambda g: g[0], jax.jit(lambda: jax.lax.scan(step, (x, w), length=2)[1])()
      )

    expected = gradients(reference_conv)
    for got in (gradients(ours), gradients_in_a_loop(ours)):
      for name, e, g in zip(("input", "kernel"), expected, got):
        assert e.dtype == g.dtype == jnp.dtype(dtype)
        scale = float(jnp.max(jnp.abs(e)))
        tolerance = {"float64": 1e-12, "float32": 1e-5}[dtype] * scale
        np.testing.assert_allclose(
          np.asarray(g), np.asarray(e), rtol=0, atol=tolerance, err_msg=name
        )
