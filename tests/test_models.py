"""Shapes, parameter counts and behaviour of the SCHN modules, losses and DCC update."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from schn_jax.models import SCHN, CycleNet, Discriminator
from schn_jax.models.latent import TransitiveLatent
from schn_jax.models.layers import BatchAttention, GraphConv, RowDropout
from schn_jax.models.reconstruction import Reconstruction
from schn_jax.models.semantic import SemanticNet
from schn_jax.models.visual import VisualNet, adaptive_avg_pool
from schn_jax.training import dcc, losses

BITS = [12, 32, 48]
CLASSES = [10, 21, 80]

# ---- parameter counts, written out from the layer shapes in docs/method.md, "Spaces" --------------------------------------


def linear(n_in, n_out):
  return n_in * n_out + n_out


def conv(n_in, n_out, kernel):
  return kernel * kernel * n_in * n_out + n_out


def attention(query, key, value):
  """Single head, output width = query width E; q/k/v/out projections with bias."""
  width = query
  return linear(query, width) + linear(key, width) + linear(value, width) + linear(width, width)


def mlp_hash(n_in, bits):
  """in -> 1024 -> 512 (ReLU, ReLU), then Linear 512 -> bits."""
  return linear(n_in, 1024) + linear(1024, 512) + linear(512, bits)


ALEXNET_TO_FC7 = (
  conv(3, 64, 11)
  + conv(64, 192, 5)
  + conv(192, 384, 3)
  + conv(384, 256, 3)
  + conv(256, 256, 3)
  + linear(256 * 6 * 6, 4096)
  + linear(4096, 4096)
)


def small_cnn_to_features(size, channels):
  return (
    conv(channels, 32, 3) + conv(32, 64, 3) + linear(64 * (size // 4) ** 2, 512) + linear(512, 512)
  )


def latent_count(bits, image_dim=4096):
  return attention(512, 512, image_dim) + linear(512, 1024) + linear(1024, bits)


def cycle_count(variant, bits):
  width = {"image": 4096, "label": 512, "latent": 1024}
  wiring = {
    "mmasia": [("label", "latent"), ("image", "latent")],
    "tomm": [("latent", "label"), ("latent", "image")],
  }[variant]
  return latent_count(bits) + sum(
    attention(width[g], width[g], width[s]) + mlp_hash(width[g], bits) for g, s in wiring
  )


def schn_count(variant, bits, classes):
  return ALEXNET_TO_FC7 + linear(4096, bits) + mlp_hash(classes, bits) + cycle_count(variant, bits)


def discriminator_count(bits):
  return 2 * (linear(bits, 1024) + linear(1024, 512) + linear(512, 1))


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def init_shapes(module, *inputs):
  return jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]


def apply_shapes(module, *inputs, **kwargs):
  params = init_shapes(module, *inputs)
  return jax.eval_shape(lambda p: module.apply({"params": p}, *inputs, **kwargs), params)


def zeros(*shape):
  return jnp.zeros(shape, jnp.float32)


def test_alexnet_count_matches_torchvision():
  # torchvision's AlexNet has 61,100,840 parameters, 4,097,000 of them in classifier.6.
  assert ALEXNET_TO_FC7 == 61_100_840 - 4_097_000


@pytest.mark.parametrize("bits", BITS)
def test_visual_net_alexnet(bits):
  module = VisualNet(bits, "alexnet")
  images = zeros(2, 64, 64, 3)
  assert n_params(init_shapes(module, images)) == ALEXNET_TO_FC7 + linear(4096, bits)
  f_image, u_image = apply_shapes(module, images)
  assert f_image.shape == (2, 4096) and u_image.shape == (2, bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("size, channels", [(28, 1), (32, 3)])
def test_visual_net_small_cnn(bits, size, channels):
  module = VisualNet(bits, "small_cnn")
  images = zeros(3, size, size, channels)
  assert n_params(init_shapes(module, images)) == (
    small_cnn_to_features(size, channels) + linear(512, bits)
  )
  f_image, u_image = apply_shapes(module, images)
  assert f_image.shape == (3, 512) and u_image.shape == (3, bits)


def test_unknown_backbone_and_variant_are_refused():
  with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
    init_shapes(VisualNet(12, "vgg"), zeros(1, 32, 32, 3))
  with pytest.raises(ValueError, match="unknown variant 'iccv'"):
    init_shapes(CycleNet("iccv", 12), zeros(2, 4096), zeros(2, 512), zeros(2, 2))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("classes", CLASSES)
def test_semantic_net(bits, classes):
  module = SemanticNet(bits)
  labels = zeros(4, classes)
  assert n_params(init_shapes(module, labels)) == mlp_hash(classes, bits)
  f_label, u_label = apply_shapes(module, labels)
  assert f_label.shape == (4, 512) and u_label.shape == (4, bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("image_dim", [4096, 512])
def test_transitive_latent(bits, image_dim):
  module = TransitiveLatent(bits)
  inputs = (zeros(5, image_dim), zeros(5, 512), zeros(5, 5))
  assert n_params(init_shapes(module, *inputs)) == latent_count(bits, image_dim)
  latent, u_latent = apply_shapes(module, *inputs)
  assert latent.shape == (5, 1024) and u_latent.shape == (5, bits)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("guide, source", [(512, 1024), (4096, 1024), (1024, 512), (1024, 4096)])
def test_reconstruction(bits, guide, source):
  module = Reconstruction(bits)
  inputs = (zeros(6, guide), zeros(6, source))
  assert n_params(init_shapes(module, *inputs)) == attention(guide, guide, source) + mlp_hash(
    guide, bits
  )
  feature, codes = apply_shapes(module, *inputs)
  assert feature.shape == (6, 512) and codes.shape == (6, bits)


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
@pytest.mark.parametrize("bits", BITS)
def test_cycle_net(variant, bits):
  module = CycleNet(variant, bits)
  inputs = (zeros(4, 4096), zeros(4, 512), zeros(4, 4))
  assert n_params(init_shapes(module, *inputs)) == cycle_count(variant, bits)
  out = apply_shapes(module, *inputs)
  assert {k: v.shape for k, v in out.items()} == {
    "latent": (4, 1024),
    "U_latent": (4, bits),
    "image_rec_feature": (4, 512),
    "U_image_rec": (4, bits),
    "label_rec_feature": (4, 512),
    "U_label_rec": (4, bits),
  }


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("classes", CLASSES)
def test_schn(variant, bits, classes):
  module = SCHN(variant, bits)
  inputs = (zeros(3, 64, 64, 3), zeros(3, classes), zeros(3, 3))
  assert n_params(init_shapes(module, *inputs)) == schn_count(variant, bits, classes)
  out = apply_shapes(module, *inputs)
  assert {k: v.shape for k, v in out.items()} == {
    "F_image": (3, 4096),
    "U_image": (3, bits),
    "F_label": (3, 512),
    "U_label": (3, bits),
    "latent": (3, 1024),
    "U_latent": (3, bits),
    "image_rec_feature": (3, 512),
    "U_image_rec": (3, bits),
    "label_rec_feature": (3, 512),
    "U_label_rec": (3, bits),
  }


@pytest.mark.parametrize("bits", BITS)
def test_discriminator(bits):
  module = Discriminator()
  inputs = (zeros(7, bits), zeros(7, bits))
  assert n_params(init_shapes(module, *inputs)) == discriminator_count(bits)
  assert apply_shapes(module, *inputs).shape == (14,)


def test_reference_parameter_count(fixture_dir):
  """meta.json's n_params counts every module the reference builds: CycleHashNet, plus the
  discriminator in tomm."""
  meta = json.loads((fixture_dir / "meta.json").read_text())
  variant, bits, classes = meta["variant"], meta["code_length"], meta["classes"]
  expected = schn_count(variant, bits, classes) + (
    discriminator_count(bits) if variant == "tomm" else 0
  )
  assert meta["checks"]["n_params"] == expected
  ours = n_params(
    init_shapes(SCHN(variant, bits), zeros(2, 64, 64, 3), zeros(2, classes), zeros(2, 2))
  )
  if variant == "tomm":
    ours += n_params(init_shapes(Discriminator(), zeros(2, bits), zeros(2, bits)))
  assert ours == expected


# ---- behaviour on real numbers (small CNN, small batch) ------------------------------------


@pytest.fixture(scope="module", params=["mmasia", "tomm"])
def small_schn(request):
  """A small-CNN SCHN with its parameters and one batch of 6 samples, 12 bits, 5 labels."""
  rng = np.random.default_rng(0)
  labels = (rng.random((6, 5)) < 0.4).astype(np.float32)
  labels[np.arange(6), rng.integers(0, 5, 6)] = 1.0
  batch = {
    "images": jnp.asarray(rng.standard_normal((6, 32, 32, 3), dtype=np.float32)),
    "labels": jnp.asarray(labels),
    "adjacency": losses.label_similarity(labels, labels),
    "database_codes": jnp.asarray(np.where(rng.random((6, 12)) < 0.5, -1.0, 1.0), jnp.float32),
  }
  model = SCHN(request.param, 12, backbone="small_cnn")
  params = model.init(jax.random.key(0), batch["images"], batch["labels"], batch["adjacency"])[
    "params"
  ]
  return model, params, batch


def _forward(model, params, batch, **kwargs):
  return model.apply(
    {"params": params}, batch["images"], batch["labels"], batch["adjacency"], **kwargs
  )


def test_code_ranges(small_schn):
  model, params, batch = small_schn
  out = _forward(model, params, batch)
  for key in ("U_image", "U_label", "U_image_rec", "U_label_rec"):
    assert float(jnp.max(jnp.abs(out[key]))) < 1.0, key  # tanh
  assert float(jnp.min(out["U_latent"])) > 0.0 and float(jnp.max(out["U_latent"])) < 1.0  # sigmoid
  assert float(jnp.min(out["F_image"])) >= 0.0 and float(jnp.min(out["latent"])) >= 0.0  # ReLU
  assert np.array_equal(
    np.asarray(model.apply({"params": params}, batch["images"], method=SCHN.encode_images)),
    np.asarray(out["U_image"]),
  )


def test_dropout_is_off_in_deterministic_mode(small_schn):
  model, params, batch = small_schn
  a = _forward(model, params, batch, train=False, rngs={"dropout": jax.random.key(1)})
  b = _forward(model, params, batch, train=False, rngs={"dropout": jax.random.key(2)})
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_dropout_is_on_in_training_mode(small_schn):
  model, params, batch = small_schn
  plain = _forward(model, params, batch)
  a = _forward(model, params, batch, train=True, rngs={"dropout": jax.random.key(1)})
  again = _forward(model, params, batch, train=True, rngs={"dropout": jax.random.key(1)})
  b = _forward(model, params, batch, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(a["F_image"], plain["F_image"])
  assert not np.allclose(a["F_image"], b["F_image"])
  np.testing.assert_array_equal(a["F_image"], again["F_image"])
  # The label network has no dropout.
  np.testing.assert_array_equal(a["F_label"], plain["F_label"])


def test_row_dropout_masks_depend_on_the_global_row_only():
  """Rows 0-99 in one call equal rows 0-39 and 40-99 in two calls with first_row set,
  as two devices holding those rows would draw them; keep rate and scaling are dropout's."""
  x = jnp.ones((100, 64))
  layer, rngs = RowDropout(0.5), {"dropout": jax.random.key(3)}
  whole = np.asarray(layer.apply({}, x, True, rngs=rngs))
  parts = np.concatenate(
    [
      np.asarray(layer.apply({}, x[:40], True, 0, rngs=rngs)),
      np.asarray(layer.apply({}, x[40:], True, 40, rngs=rngs)),
    ]
  )
  np.testing.assert_array_equal(parts, whole)
  assert set(np.unique(whole)) == {0.0, 2.0}
  assert abs((whole == 0).mean() - 0.5) < 0.03  # 6,400 draws: 5 sigma
  assert len({row.tobytes() for row in whole}) == 100, "rows share a mask"
  shifted = np.asarray(layer.apply({}, x[:40], True, 1, rngs=rngs))
  assert not np.array_equal(shifted, whole[:40])
  np.testing.assert_array_equal(layer.apply({}, x, False, rngs=rngs), x)


def test_latent_dropout_acts_on_codes_not_on_latent_feature():
  """The latent feature handed to the reconstructions is the GCN's ReLU output; dropout 0.5
  sits only between it and the latent hash layer."""
  rng = np.random.default_rng(3)
  inputs = (
    rng.standard_normal((4, 64), dtype=np.float32),
    rng.standard_normal((4, 512), dtype=np.float32),
    np.ones((4, 4), np.float32),
  )
  module = TransitiveLatent(8)
  params = module.init(jax.random.key(0), *inputs)
  latent, codes = module.apply(params, *inputs)
  latent_train, codes_train = module.apply(
    params, *inputs, train=True, rngs={"dropout": jax.random.key(5)}
  )
  np.testing.assert_array_equal(latent, latent_train)
  assert not np.allclose(codes, codes_train)


def test_cycle_part_sends_no_gradient_to_features():
  """F_image and F_label enter the cycle part with gradients stopped, although its outputs
  do depend on them."""
  rng = np.random.default_rng(4)
  # Widths are read from the inputs; small ones keep the check fast.
  f_image = jnp.asarray(rng.standard_normal((4, 96), dtype=np.float32))
  f_label = jnp.asarray(np.abs(rng.standard_normal((4, 32), dtype=np.float32)))
  adjacency = jnp.ones((4, 4))
  for variant in ("mmasia", "tomm"):
    module = CycleNet(variant, 12)
    params = module.init(jax.random.key(0), f_image, f_label, adjacency)

    def total(f_img, f_lab):
      out = module.apply(params, f_img, f_lab, adjacency)
      return sum(jnp.sum(v**2) for v in out.values())

    grad_image, grad_label = jax.grad(total, argnums=(0, 1))(f_image, f_label)
    assert not np.any(grad_image) and not np.any(grad_label), variant
    assert total(f_image * 1.5, f_label) != total(f_image, f_label)
    assert total(f_image, f_label * 1.5) != total(f_image, f_label)


def test_cycle_loss_reaches_feature_networks_only_through_codes(small_schn):
  """The gradient of the cycle loss on the visual and semantic networks equals that of the same
  loss with the cycle part's outputs detached: only U_image / U_label carry it back."""
  model, params, batch = small_schn
  cycle_outputs = (
    "latent",
    "U_latent",
    "image_rec_feature",
    "U_image_rec",
    "label_rec_feature",
    "U_label_rec",
  )

  def loss(p, detach_cycle):
    out = _forward(model, p, batch)
    if detach_cycle:
      out = {k: jax.lax.stop_gradient(v) if k in cycle_outputs else v for k, v in out.items()}
    return losses.cycle_loss(out, batch["database_codes"], batch["adjacency"], GAMMA)[0]

  full = jax.grad(loss)(params, False)
  detached = jax.grad(loss)(params, True)
  for space in ("visual", "semantic"):
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12),
      full[space],
      detached[space],
    )
  # The reconstruction terms do pull U_image toward the reconstruction...
  rec_only = jax.grad(
    lambda p: losses.cycle_loss(
      _forward(model, p, batch), batch["database_codes"], batch["adjacency"], GAMMA
    )[1]["rec_image"]
  )(params)
  assert np.any(rec_only["visual"]["hash"]["linear"]["kernel"])
  # ... and the cycle loss does train the cycle part.
  assert np.any(full["cycle"]["latent"]["graph_conv"]["kernel"])


# ---- layers against brute-force NumPy ------------------------------------------------------


def test_batch_attention_mixes_samples_of_the_batch():
  rng = np.random.default_rng(5)
  query, value = rng.standard_normal((5, 6)), rng.standard_normal((5, 9))
  module = BatchAttention()
  params = module.init(jax.random.key(0), query, query, value)["params"]
  ours = module.apply({"params": params}, query, query, value)
  p = jax.tree_util.tree_map(np.asarray, params)
  proj = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]
  q, k, v = proj(query, "q_proj"), proj(query, "k_proj"), proj(value, "v_proj")
  expected = np.zeros((5, 6))
  for i in range(5):
    scores = np.array([q[i] @ k[j] / np.sqrt(6) for j in range(5)])
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    expected[i] = proj(sum(weights[j] * v[j] for j in range(5))[None], "out_proj")[0]
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_graph_conv_uses_raw_adjacency():
  rng = np.random.default_rng(6)
  x = rng.standard_normal((4, 3)).astype(np.float32)
  adjacency = np.array([[1, 1, 0, 0], [1, 1, 0, 1], [0, 0, 1, 0], [0, 1, 0, 1]], np.float32)
  module = GraphConv(5)
  params = {
    "kernel": rng.standard_normal((3, 5)).astype(np.float32),
    "bias": rng.standard_normal(5).astype(np.float32),
  }
  ours = module.apply({"params": params}, x, adjacency)
  expected = np.stack(
    [
      sum(adjacency[i, j] * (x[j] @ params["kernel"]) for j in range(4)) + params["bias"]
      for i in range(4)
    ]
  )
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, out", [(13, 6), (8, 6), (1, 6), (6, 6), (5, 3)])
def test_adaptive_avg_pool_matches_torch(size, out):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(size).standard_normal((2, size, size + 1, 3), dtype=np.float32)
  expected = torch.nn.AdaptiveAvgPool2d(out)(torch.from_numpy(x).permute(0, 3, 1, 2))
  ours = adaptive_avg_pool(jnp.asarray(x), out)
  np.testing.assert_allclose(
    np.asarray(ours), expected.permute(0, 2, 3, 1).numpy(), rtol=1e-6, atol=1e-6
  )


# ---- losses, similarity and DCC against brute-force NumPy ------------------------------------


def numpy_feature_loss(u, b, s, gamma=10.0):
  n, bits = u.shape
  hash_term = sum((bits * s[i, j] - u[i] @ b[j]) ** 2 for i in range(n) for j in range(n)) / n**2
  return hash_term * 12 / bits + gamma * np.mean((u - b) ** 2)


def test_cycle_loss_matches_numpy():
  rng = np.random.default_rng(7)
  n, bits = 6, 12
  out = {
    k: rng.uniform(-1, 1, (n, bits)) for k in ("U_image", "U_label", "U_image_rec", "U_label_rec")
  }
  out["U_latent"] = rng.uniform(0, 1, (n, bits))
  codes = np.where(rng.random((n, bits)) < 0.5, -1.0, 1.0)
  similarity = (rng.random((n, n)) < 0.4).astype(np.float64)
  total, terms = losses.cycle_loss(
    {k: jnp.asarray(v, jnp.float32) for k, v in out.items()},
    jnp.asarray(codes, jnp.float32),
    jnp.asarray(similarity, jnp.float32),
    GAMMA,
  )
  expected = {
    f"feature_{s}": numpy_feature_loss(out[f"U_{s}"], codes, similarity)
    for s in ("image", "label", "latent")
  }
  expected.update(
    {f"rec_{s}": np.mean((out[f"U_{s}_rec"] - out[f"U_{s}"]) ** 2) for s in ("image", "label")}
  )
  for key, value in expected.items():
    np.testing.assert_allclose(float(terms[key]), value, rtol=1e-5, err_msg=key)
  np.testing.assert_allclose(float(total), sum(expected.values()), rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_cycle"]), float(total))


def numpy_bce(probs, target):
  with np.errstate(divide="ignore"):
    return -np.mean(
      target * np.maximum(np.log(probs), -100) + (1 - target) * np.maximum(np.log(1 - probs), -100)
    )


@pytest.mark.parametrize(
  "probs, target",
  [
    ([0.2, 0.7, 0.5, 0.99], [1.0, 0.0, 1.0, 1.0]),
    ([0.0, 1.0, 0.3, 1e-50], [1.0, 0.0, 0.0, 1.0]),  # log(0): torch clamps at -100
    ([0.0, 1.0], [0.0, 1.0]),  # 0 * log(0) is 0 after the clamp, not NaN
  ],
)
def test_binary_cross_entropy_matches_torch_definition(probs, target):
  probs32 = np.asarray(probs, np.float32)
  ours = float(losses.binary_cross_entropy(jnp.asarray(probs32), jnp.asarray(target, jnp.float32)))
  expected = numpy_bce(probs32.astype(np.float64), np.asarray(target))
  assert np.isfinite(ours)
  np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)


def test_binary_cross_entropy_clamp_value():
  # Both samples entirely wrong: each contributes the clamp, 100.
  assert float(losses.binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]))) == 100.0


def test_binary_cross_entropy_gradient_is_torchs_and_finite_when_saturated():
  # torch's BCE backward: (p - y) / max(p (1 - p), 1e-12) / n. A discriminator that
  # outputs exactly 0 or 1 must not turn the G step's gradient into NaN.
  probs = jnp.array([0.0, 1.0, 0.3, 0.9], jnp.float32)
  for target in (0.0, 1.0):
    grad = np.asarray(jax.grad(losses.binary_cross_entropy)(probs, target))
    p = np.asarray(probs, np.float64)
    expected = (p - target) / np.maximum(p * (1 - p), 1e-12) / p.size
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, expected, rtol=1e-5)


@pytest.mark.parametrize("ns, n", [(7, 7), (9, 40)])
def test_soft_similarity_matches_numpy(ns, n):
  rng = np.random.default_rng(ns * n)
  sample_labels = (rng.random((ns, 6)) < 0.25).astype(np.float32)
  database_labels = (rng.random((n, 6)) < 0.25).astype(np.float32)
  r = dcc.positive_ratio(sample_labels, database_labels)
  soft = dcc.soften(losses.label_similarity(sample_labels, database_labels), r)
  s = np.array(
    [
      [1.0 if np.any(sample_labels[i] * database_labels[j]) else -1.0 for j in range(n)]
      for i in range(ns)
    ]
  )
  expected_r = s.sum() / (1 - s).sum()
  np.testing.assert_allclose(float(r), expected_r, rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(soft), s * (1 + expected_r) - expected_r, rtol=1e-6, atol=1e-6
  )
  # Positives stay at 1, negatives become -(1 + 2r).
  np.testing.assert_allclose(np.asarray(soft)[s < 0], -(1 + 2 * expected_r), rtol=1e-6)
  np.testing.assert_array_equal(
    np.asarray(losses.label_similarity(sample_labels, database_labels)), (s > 0).astype(np.float32)
  )


DCC_HYPER = dict(alpha=2.0, beta=0.1, gamma=10.0)  # the reference's values
GAMMA = DCC_HYPER["gamma"]


def numpy_dcc(codes, u, u_label, u_latent, similarity, alpha=2.0, beta=0.1, gamma=10.0):
  """DCC (docs/method.md) written literally, in float64; also returns the pre-sign values."""
  codes = codes.astype(np.float64).copy()
  bits = codes.shape[1]
  q = bits * similarity.T @ u + gamma * u
  presign = np.zeros_like(codes)
  for k in range(bits):
    others_b, others_u = np.delete(codes, k, axis=1), np.delete(u, k, axis=1)
    presign[:, k] = (
      q[:, k] - others_b @ others_u.T @ u[:, k] + alpha * u_label[:, k] + beta * u_latent[:, k]
    )
    codes[:, k] = np.sign(presign[:, k])
  return codes, presign


def _dcc_inputs(seed, ns=20, bits=12):
  rng = np.random.default_rng(seed)
  labels = (rng.random((ns, 4)) < 0.4).astype(np.float32)
  soft = dcc.soften(losses.label_similarity(labels, labels), dcc.positive_ratio(labels, labels))
  return (
    rng.choice([-1.0, 0.0, 1.0], (ns, bits)).astype(np.float32),
    rng.uniform(-1, 1, (ns, bits)).astype(np.float32),
    rng.uniform(-1, 1, (ns, bits)).astype(np.float32),
    rng.uniform(0, 1, (ns, bits)).astype(np.float32),
    np.asarray(soft),
  )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dcc_matches_numpy(seed):
  inputs = _dcc_inputs(seed)
  expected, presign = numpy_dcc(*(x.astype(np.float64) for x in inputs))
  # Away from zero, float32 rounding cannot flip a sign: the comparison is exact.
  assert np.min(np.abs(presign)) > 1e-3
  np.testing.assert_array_equal(
    np.asarray(dcc.dcc_update(*map(jnp.asarray, inputs), **DCC_HYPER)), expected
  )


def test_dcc_sign_of_zero_is_zero():
  """A bit whose pre-sign value is exactly 0 stays 0, as torch.sign gives."""
  codes, u, u_label, u_latent, similarity = _dcc_inputs(3)
  # With column k of U zero, Q[:, k] and the U' @ U[:, k] term vanish; alpha * -0.05 cancels
  # beta * 1.0 exactly (0.1 in float32 is twice 0.05 in float32).
  k = 4
  u[:, k], u_label[:, k], u_latent[:, k] = 0.0, -0.05, 1.0
  ours = np.asarray(
    dcc.dcc_update(*map(jnp.asarray, (codes, u, u_label, u_latent, similarity)), **DCC_HYPER)
  )
  assert not np.any(ours[:, k])
  expected, _ = numpy_dcc(
    *(x.astype(np.float64) for x in (codes, u, u_label, u_latent, similarity))
  )
  others = np.arange(u.shape[1]) != k
  np.testing.assert_array_equal(ours[:, others], expected[:, others])
  assert np.all(np.abs(ours[:, others]) == 1)
