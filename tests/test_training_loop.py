"""The outer loop's behaviour as the reference runs it, and torch's defaults
for everything trained from scratch. Whole-run parity is test_reference_check's
trajectory test; these isolate each behaviour."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import default as default_config
from schn_jax import data as data_lib
from schn_jax import sharding
from schn_jax.models import SCHN, Discriminator
from schn_jax.training import loop
from schn_jax.training.state import adam_step, create_state, make_optimizers
from schn_jax.training.step import (
  StepConfig,
  adversarial_learning_rate,
  cycle_learning_rate,
  make_step_functions,
)


def _config(variant="tomm", **overrides):
  config = default_config.base_config("fashion_mnist")
  config.variant = variant
  for key, value in overrides.items():
    config[key] = value
  return config


# ---------------------------------------------------------------- D/G learning-rate decay


@pytest.mark.parametrize("max_iter, decayed_after", [(50, (5, 40)), (8, (130,)), (150, (130,))])
def test_adversarial_rate_decays_where_the_reference_does(max_iter, decayed_after):
  config = _config(max_iter=max_iter)
  step_config = StepConfig.from_config(config)
  assert step_config.lr_milestones == decayed_after
  for iteration in range(0, 160):
    # The rate is divided by 5 at the END of each listed 0-based iteration.
    passed = sum(iteration > m for m in decayed_after)
    rate = float(adversarial_learning_rate(step_config, jnp.asarray(iteration)))
    np.testing.assert_allclose(rate, config.learning_rate / 5.0**passed, rtol=1e-6)


def test_cycle_rate_decays_only_where_the_config_says():
  """The reference never decays the cycle rate; `cycle_lr_decay` (an option of ours) divides
  it at the end of its milestones, and the step then trains with the divided rate."""
  assert tuple(_config().cycle_lr_decay.milestones) == ()
  config = _config("mmasia")
  config.cycle_lr_decay.milestones, config.cycle_lr_decay.factor = (2,), 10.0
  step_config = StepConfig.from_config(config)
  rates = [float(cycle_learning_rate(step_config, jnp.asarray(i))) for i in range(5)]
  expected = [config.learning_rate] * 3 + [config.learning_rate / 10] * 2
  np.testing.assert_allclose(rates, expected, rtol=1e-6)

  model, discriminator, optimizers, _, state, batch = _small_run("mmasia")
  state = state.replace(iteration=jnp.asarray(3))
  undecayed = dataclasses.replace(step_config, learning_rate=step_config.learning_rate / 10)
  undecayed = dataclasses.replace(undecayed, cycle_lr_milestones=())
  params = [
    make_step_functions(model, discriminator, optimizers, c)[0](state, batch, jax.random.key(0))[
      0
    ].params
    for c in (step_config, undecayed)
  ]
  for a, b in zip(jax.tree.leaves(params[0]), jax.tree.leaves(params[1])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.abs(a - b).max(), params[0], state.params))
  assert max(float(m) for m in moved) > 0


# ---------------------------------------------------------------- a small model


def _small_run(variant, semantics="torch18", bits=8, classes=5, batch=6):
  model, discriminator = (
    SCHN(variant, bits, backbone="small_cnn", dropout_rate=0.0),
    Discriminator(),
  )
  keys = jax.random.split(jax.random.key(3), 3)
  params = model.init(
    keys[0], jnp.zeros((2, 28, 28, 1)), jnp.zeros((2, classes)), jnp.ones((2, 2))
  )["params"]
  disc_params = (
    discriminator.init(keys[1], jnp.zeros((2, bits)), jnp.zeros((2, bits)))["params"]
    if variant == "tomm"
    else {}
  )
  optimizers = make_optimizers(1e-5, semantics, params["cycle"])
  state = create_state(params, disc_params, optimizers, 20, bits, keys[2])
  data = np.random.default_rng(0)
  labels = np.eye(classes, dtype=np.float32)[data.integers(0, classes, batch)]
  batch_inputs = {
    "images": data.normal(size=(batch, 28, 28, 1)).astype(np.float32),
    "labels": labels,
    "database_codes": np.sign(data.normal(size=(batch, bits))).astype(np.float32),
  }
  step_config = StepConfig.from_config(_config(variant))
  return model, discriminator, optimizers, step_config, state, batch_inputs


def test_tomm_keeps_the_codes_of_the_second_forward():
  model, discriminator, optimizers, step_config, state, batch = _small_run("tomm")
  cycle_update, _, train_step = make_step_functions(model, discriminator, optimizers, step_config)
  rng = jax.random.key(0)
  _, codes, _ = train_step(state, batch, rng, train=False)
  after_cycle, first_forward, _, _ = cycle_update(state, batch, rng, train=False)
  similarity = (batch["labels"] @ batch["labels"].T > 0).astype(np.float32)
  second_forward = model.apply(
    {"params": after_cycle.params}, batch["images"], batch["labels"], similarity
  )
  for name in ("U_image", "U_label", "U_latent"):
    np.testing.assert_allclose(codes[name], second_forward[name], rtol=1e-6, atol=1e-7)
    assert np.abs(np.asarray(codes[name]) - np.asarray(first_forward[name])).max() > 1e-6, name


# ---------------------------------------------------------------- batches per outer iteration


@pytest.mark.parametrize("variant", ["tomm", "mmasia"])
def test_batches_per_epoch_follow_the_variant(variant):
  """tomm builds one set of batches per outer iteration (order and augmentation seed)
  and replays it every epoch; mmasia reshuffles and re-augments every epoch."""
  config = _config(variant, sample_size=10, batch_size=4, max_epoch=3, seed=1)
  pool = np.arange(30)
  sample, orders = loop.plan_iteration(config, pool, 16, 0)
  seeds = [loop.augment_seed(config, 16, 0, epoch) for epoch in range(3)]
  assert len(sample) == 10 and orders.shape == (3, 10)
  for order in orders:  # every epoch visits the whole sample once
    np.testing.assert_array_equal(np.sort(order), np.arange(10))
  if variant == "tomm":
    assert all(np.array_equal(orders[0], o) for o in orders) and len(set(seeds)) == 1
  else:
    assert not any(np.array_equal(orders[0], o) for o in orders[1:]) and len(set(seeds)) == 3


def _tiny_data(config, size=40, classes=4):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (size, 28, 28, 1), dtype=np.uint8)
  labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, size)]
  source = data_lib.sources.ArraySource("tiny", images, labels)
  split = data_lib.protocols.Split(
    query=np.arange(30, 40), database=np.arange(30), train=np.arange(30)
  )
  return data_lib.RetrievalData(
    config.data, source, split, data_lib.pipeline.Loader(source, config.data)
  )


@pytest.mark.parametrize("variant", ["tomm", "mmasia"])
def test_streamed_iteration_equals_the_on_device_one(variant):
  """The two ways images reach the step (docs/performance.md) run the same batches;
  the streamed one loads, for tomm, the same batches with the same seed every epoch."""
  config = _config(
    variant,
    backbone="small_cnn",
    sample_size=20,
    batch_size=8,
    max_epoch=2,
    code_lengths=(8,),
    stream_chunk=2,
  )
  config.data.image_size, config.data.num_channels = 28, 1
  config.data.augment, config.data.test_resize = False, None
  data = _tiny_data(config)
  results = {}
  for device_pool_mb in (2048, 0):
    config.device_pool_mb = device_pool_mb
    pieces, state = loop.build(config, 8, (28, 28, 1), 4, 30)
    mesh = sharding.make_mesh()
    state = sharding.replicate(state, mesh)
    iteration = loop.Iteration(config, data, pieces, mesh)
    assert iteration.on_device == (device_pool_mb > 0)
    loads = []
    batches = data.batches
    data.batches = lambda indices, size, **kw: loads.append(
      (np.array(indices), kw["seed"])
    ) or batches(indices, size, **kw)
    try:
      for _ in range(2):
        state, step_losses, seen = iteration(state)
    finally:
      data.batches = batches
    assert seen == 40 and step_losses["loss_cycle"].shape == (2, 3)
    results[device_pool_mb] = (sharding.to_host(state.database_codes), step_losses, loads)
  (on_device, on_losses, no_loads), (streamed, streamed_losses, loads) = results[2048], results[0]
  assert not no_loads and np.abs(on_device).sum() > 0
  np.testing.assert_array_equal(streamed, on_device)
  for name in on_losses:
    np.testing.assert_allclose(streamed_losses[name], on_losses[name], rtol=1e-5, err_msg=name)
  first_iteration = loads[:4]  # 2 epochs x (full batches, the rest)
  if variant == "tomm":
    assert all(
      np.array_equal(a[0], b[0]) and a[1] == b[1]
      for a, b in zip(first_iteration[:2], first_iteration[2:])
    )
  else:
    assert not np.array_equal(first_iteration[0][0], first_iteration[2][0])
    assert first_iteration[0][1] != first_iteration[2][1]


def test_initial_database_codes():
  labels = np.eye(4, dtype=np.float32)[[0, 1, 1, 3, 0]]
  config = _config()
  np.testing.assert_array_equal(loop.initial_database_codes(config, labels, 16, np.float32), 0.0)
  config.database_init = "label_codes"
  codes = loop.initial_database_codes(config, labels, 16, np.float32)
  assert set(np.unique(codes)) <= {-1.0, 1.0}
  np.testing.assert_array_equal(codes[1], codes[2])  # the same label, the same code
  np.testing.assert_array_equal(codes[0], codes[4])
  assert (codes[0] != codes[1]).any() and (codes[1] != codes[3]).any()


# ---------------------------------------------------------------- optimizer semantics


@pytest.mark.parametrize("semantics", ["torch18", "torch2"])
def test_generator_adam_treats_the_unreached_head_as_torch_does(semantics):
  """The G optimizer and a parameter its loss does not reach (the latent hash head):
  torch 1.8's zero_grad leaves a zero gradient (Adam steps it by weight decay alone),
  torch 2 leaves None (Adam skips it). Three steps against torch's own Adam."""
  rng = np.random.default_rng(0)
  params = {
    "latent": {"hash": {"linear": {"kernel": rng.normal(size=(4, 3)).astype(np.float32)}}},
    "image_rec": {"mlp": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}},
  }
  grads = [
    {
      "latent": {"hash": {"linear": {"kernel": np.zeros((4, 3), np.float32)}}},
      "image_rec": {"mlp": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}},
    }
    for _ in range(3)
  ]
  lr, weight_decay = 1e-3, 1e-2
  generator = make_optimizers(weight_decay, semantics, params).generator
  ours, opt_state = jax.tree_util.tree_map(jnp.asarray, params), generator.init(params)
  for g in grads:
    ours, opt_state = adam_step(generator, g, opt_state, ours, lr)

  head = torch.nn.Parameter(torch.tensor(params["latent"]["hash"]["linear"]["kernel"]))
  rec = torch.nn.Parameter(torch.tensor(params["image_rec"]["mlp"]["kernel"]))
  adam = torch.optim.Adam([head, rec], lr=lr, weight_decay=weight_decay)
  for g in grads:
    adam.zero_grad(set_to_none=semantics == "torch2")
    head.grad = torch.zeros_like(head) if semantics == "torch18" else None
    rec.grad = torch.tensor(g["image_rec"]["mlp"]["kernel"])
    adam.step()
  np.testing.assert_allclose(
    ours["latent"]["hash"]["linear"]["kernel"], head.detach().numpy(), rtol=1e-6, atol=1e-7
  )
  np.testing.assert_allclose(
    ours["image_rec"]["mlp"]["kernel"], rec.detach().numpy(), rtol=1e-6, atol=1e-7
  )
  moved = not np.array_equal(
    ours["latent"]["hash"]["linear"]["kernel"], params["latent"]["hash"]["linear"]["kernel"]
  )
  assert moved == (semantics == "torch18")


def test_adam_matches_torch_in_float32():
  """Bias corrections to float32 precision (torch computes them in double): with lr 1,
  so that a relative error of the step shows, five steps stay within float32 rounding."""
  rng = np.random.default_rng(1)
  start = rng.normal(size=2000).astype(np.float32)
  grads = [rng.normal(size=2000).astype(np.float32) for _ in range(5)]
  adam = make_optimizers(1e-2, "torch2", {}).cycle
  ours, opt_state = jnp.asarray(start), adam.init(jnp.asarray(start))
  for g in grads:
    ours, opt_state = adam_step(adam, jnp.asarray(g), opt_state, ours, 1.0)
  param = torch.nn.Parameter(torch.tensor(start))
  torch_adam = torch.optim.Adam([param], lr=1.0, weight_decay=1e-2)
  for g in grads:
    param.grad = torch.tensor(g)
    torch_adam.step()
  assert ours.dtype == jnp.float32
  np.testing.assert_allclose(ours, param.detach().numpy(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- initialisation


def _torch_reference(path, leaf, tree):
  """torch's own initialiser for the layer at `path` (our parameter leaf `leaf`)."""
  names = [getattr(k, "key", str(k)) for k in path]
  layer, kind = names[-2], names[-1]
  kernel = flax.traverse_util.flatten_dict(tree)[tuple(names[:-1]) + ("kernel",)]
  if layer in ("q_proj", "k_proj", "v_proj") and kind == "kernel":
    return torch.nn.init.xavier_uniform_(torch.empty(kernel.shape[1], kernel.shape[0]))
  if layer in ("q_proj", "k_proj", "v_proj", "out_proj") and kind == "bias":
    return torch.zeros(leaf.shape)
  if layer == "graph_conv":  # the reference's GraphConvolution.reset_parameters
    bound = 1.0 / np.sqrt(kernel.shape[1])
    return torch.empty(leaf.shape).uniform_(-bound, bound)
  if kernel.ndim == 4:
    height, width, fan_in, out = kernel.shape
    conv = torch.nn.Conv2d(fan_in, out, (height, width))
    return conv.weight if kind == "kernel" else conv.bias
  linear = torch.nn.Linear(*kernel.shape)
  return linear.weight if kind == "kernel" else linear.bias


def _ks_statistic(a, b):
  a, b = np.sort(a), np.sort(b)
  grid = np.concatenate([a, b])
  return np.max(
    np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))
  )


@pytest.mark.parametrize(
  "variant, backbone, size",
  [("tomm", "alexnet", 64), ("mmasia", "alexnet", 64), ("tomm", "small_cnn", 28)],
)
def test_initialisation_follows_torch_defaults(variant, backbone, size):
  torch.manual_seed(0)
  bits, classes = 16, 7
  model = SCHN(variant, bits, backbone=backbone)
  channels = 3 if backbone == "alexnet" else 1
  params = model.init(
    jax.random.key(0),
    jnp.zeros((2, size, size, channels)),
    jnp.zeros((2, classes)),
    jnp.ones((2, 2)),
  )["params"]
  disc = Discriminator().init(jax.random.key(1), jnp.zeros((2, bits)), jnp.zeros((2, bits)))[
    "params"
  ]
  rng = np.random.default_rng(0)
  checked = 0
  for tree in (params, disc):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      name = jax.tree_util.keystr(path)
      ours = np.asarray(leaf, np.float64).ravel()
      theirs = _torch_reference(path, leaf, tree).detach().numpy().astype(np.float64).ravel()
      assert ours.size == theirs.size, name
      if not theirs.any():
        np.testing.assert_array_equal(ours, 0.0, err_msg=name)
        continue
      if ours.size > 100_000:  # the two large fc layers: a subsample of each is plenty
        ours, theirs = (
          rng.choice(ours, 100_000, replace=False),
          rng.choice(theirs, 100_000, replace=False),
        )
      # Two-sample Kolmogorov-Smirnov at a 1e-6 false-alarm rate (c = 2.69).
      limit = 2.69 * np.sqrt(2.0 / ours.size)
      assert _ks_statistic(ours, theirs) < limit, name
      if ours.size >= 1000:
        np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.05, err_msg=name)
        assert np.abs(ours).max() <= np.abs(theirs).max() * 1.02, name
      checked += 1
  assert checked > 30
