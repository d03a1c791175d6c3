"""The torchvision backbones (ResNet-18/34/50, VGG-16) against torchvision itself.

- float64 forward and gradients (input and every parameter) equal torchvision's
  model, BatchNorm in training mode (batch statistics) and frozen (torch's eval);
- the running statistics after one training-mode forward equal torch's;
- torchvision state dicts load from .pth, .safetensors and .npz;
- a ResNet in the real training loop: 8 devices equal 1 in float64 (a subprocess:
  this file run as a script is the 8-device worker), and a resumed run equals an
  uninterrupted one bit for bit.

Errors are relative to the largest magnitude of each compared array. In float64
the sums of a convolution taken in another order differ by ~1e-15 relative; through
50 layers of convolutions and BatchNorms the gradients stay within 1e-10, while a
wrong transposition, stride or statistic is off by O(1).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from schn_jax import interop
from schn_jax.interop import layout, weights
from schn_jax.models.visual import BACKBONES

import support

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

FLOAT64_RELATIVE = 1e-10
RESNETS = ("resnet18", "resnet34", "resnet50")
# VGG-16's fc6 has 25088 x 4096 weights (0.8 GB in float64 with its gradient); the
# parity test narrows fc6/fc7 to this width, every layer keeping torchvision's layout.
VGG_TEST_WIDTH = 32


def relative_error(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-300))


def torchvision_model(backbone, seed=0):
  """torchvision's model with random weights and, for BatchNorm, random affine
  parameters and running statistics (the defaults 1, 0, 0, 1 would hide a swap)."""
  torch.manual_seed(seed)
  if backbone == "vgg16":
    model = torchvision.models.vgg16(weights=None)
    fc6, fc7 = model.classifier[0], model.classifier[3]
    model.classifier[0] = torch.nn.Linear(fc6.in_features, VGG_TEST_WIDTH)
    model.classifier[3] = torch.nn.Linear(VGG_TEST_WIDTH, VGG_TEST_WIDTH)
    model.classifier[6] = torch.nn.Linear(VGG_TEST_WIDTH, 10)
    del fc7
  else:
    model = getattr(torchvision.models, backbone)(weights=None)
  generator = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        channels = module.num_features
        module.weight.copy_(1 + 0.2 * torch.randn(channels, generator=generator))
        module.bias.copy_(0.2 * torch.randn(channels, generator=generator))
        module.running_mean.copy_(0.1 * torch.randn(channels, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
  return model.double()


def torchvision_features(model, backbone, images):
  """What our backbone returns: a ResNet's pooled feature, VGG's fc7 after its ReLU."""
  if backbone == "vgg16":
    x = torch.flatten(model.avgpool(model.features(images)), 1)
    return model.classifier[:5](x)
  x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
  for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    x = stage(x)
  return torch.flatten(model.avgpool(x), 1)


def ours(backbone):
  if backbone == "vgg16":
    return BACKBONES[backbone](dropout_rate=0.0, feature_dim=VGG_TEST_WIDTH)
  return BACKBONES[backbone](dropout_rate=0.0)


def state_dict(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def template(backbone, size=32, dtype=jnp.float64):
  variables = jax.eval_shape(ours(backbone).init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  variables.setdefault("batch_stats", {})
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), variables)


def identity(x):
  return x


@pytest.mark.parametrize(
  "backbone, batchnorm, size",
  # Frozen BatchNorm: one basic-block and one bottleneck ResNet (ResNet-34 differs from
  # ResNet-18 only in its number of blocks).
  [(b, "train", 64) for b in RESNETS]
  + [("resnet18", "frozen", 64), ("resnet50", "frozen", 64), ("vgg16", "frozen", 32)],
)
def test_forward_and_gradients_equal_torchvision(backbone, batchnorm, size):
  with jax.enable_x64(True):
    model = torchvision_model(backbone)
    model.train(batchnorm == "train")
    variables = interop.backbone_from_torchvision(state_dict(model), template(backbone), backbone)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, size, size))
    probe = rng.standard_normal((2, model_width(backbone)))

    torch_images = torch.tensor(images, requires_grad=True)
    features = torchvision_features(model, backbone, torch_images)
    (features * torch.tensor(probe)).sum().backward()
    torch_grads = {
      k: (p.grad.numpy() if p.grad is not None else np.zeros_like(p.detach().numpy()))
      for k, p in model.named_parameters()
    }
    # The converter wants every tensor of a rule; the running statistics are not compared.
    torch_grads.update({k: v for k, v in state_dict(model).items() if k not in torch_grads})
    expected_grads = interop.backbone_from_torchvision(torch_grads, template(backbone), backbone)[
      "params"
    ]

    module, train = ours(backbone), batchnorm == "train"
    batch_sum = identity if train else None

    def loss(params, images_nhwc):
      out, updated = module.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images_nhwc,
        train,
        0,
        batch_sum,
        mutable=["batch_stats"],
      )
      return jnp.sum(out * probe), (out, updated)

    nhwc = jnp.transpose(jnp.asarray(images), (0, 2, 3, 1))
    # Op by op: compiling the whole gradient program takes longer than running it.
    (_, (out, updated)), (grad_params, grad_images) = jax.value_and_grad(
      loss, argnums=(0, 1), has_aux=True
    )(variables["params"], nhwc)

    errors = {"features": relative_error(out, features.detach().numpy())}
    errors["d/d images"] = relative_error(
      jnp.transpose(grad_images, (0, 3, 1, 2)), torch_images.grad.numpy()
    )
    flat_ours = jax.tree_util.tree_leaves_with_path(grad_params)
    flat_expected = jax.tree_util.tree_leaves(expected_grads)
    errors["d/d params"] = max(relative_error(a, b) for (_, a), b in zip(flat_ours, flat_expected))
    if backbone in RESNETS:  # the running statistics after the forward
      moved = interop.backbone_to_torchvision({"params": variables["params"], **updated}, backbone)
      after = state_dict(model)
      running = [k for k in moved if "running" in k]
      errors["running statistics"] = max(relative_error(moved[k], after[k]) for k in running)
      before = interop.backbone_to_torchvision(variables, backbone)
      changed = any(not np.array_equal(before[k], after[k]) for k in running)
      assert changed == train, "torch moves them in training mode only"
    print(backbone, batchnorm, {k: f"{v:.2g}" for k, v in errors.items()})
    assert np.abs(features.detach().numpy()).max() > 0.1  # not a vanishing feature
    for name, error in errors.items():
      assert error <= FLOAT64_RELATIVE, (name, error)


def model_width(backbone):
  return {"vgg16": VGG_TEST_WIDTH, "resnet50": 2048}.get(backbone, 512)


# ---------------------------------------------------------------- BatchNorm in the step


@pytest.mark.parametrize("batchnorm", ["train", "frozen"])
def test_running_statistics_move_once_per_batch_and_never_when_frozen(batchnorm):
  """The cycle step's forward moves the running statistics (training mode); tomm's
  re-forward after it normalises with batch statistics but leaves them alone; frozen
  BatchNorm never moves them, while its scale and bias still train."""
  from schn_jax.models import SCHN, Discriminator
  from schn_jax.training.state import create_state, make_optimizers
  from schn_jax.training.step import StepConfig, make_step_functions

  bits, classes, rows = 8, 3, 4
  model = SCHN("tomm", bits, backbone="resnet18", batchnorm=batchnorm, dropout_rate=0.0)
  variables = model.init(
    jax.random.key(0), jnp.zeros((2, 32, 32, 3)), jnp.zeros((2, classes)), jnp.ones((2, 2))
  )
  discriminator = Discriminator()
  disc_params = discriminator.init(jax.random.key(1), jnp.zeros((2, bits)), jnp.zeros((2, bits)))[
    "params"
  ]
  optimizers = make_optimizers(1e-5, "torch18", variables["params"]["cycle"])
  state = create_state(
    variables["params"],
    disc_params,
    optimizers,
    rows,
    bits,
    jax.random.key(2),
    batch_stats=variables["batch_stats"],
  )
  data = np.random.default_rng(0)
  batch = {
    "images": data.normal(size=(rows, 32, 32, 3)).astype(np.float32),
    "labels": np.eye(classes, dtype=np.float32)[[0, 1, 2, 0]],
    "database_codes": np.sign(data.normal(size=(rows, bits))).astype(np.float32),
  }
  step_config = StepConfig("tomm", 1e-3, 10.0, (130,), 5.0)
  _, _, train_step = make_step_functions(model, discriminator, optimizers, step_config)
  after_step = train_step(state, batch, jax.random.key(3))[0]
  # What one forward in training mode, with the parameters before the step, makes of them.
  _, forward = model.apply(
    variables,
    batch["images"],
    batch["labels"],
    (batch["labels"] @ batch["labels"].T > 0).astype(np.float32),
    True,
    mutable=["batch_stats"],
    rngs={"dropout": jax.random.key(4)},
  )
  expected = forward["batch_stats"] if batchnorm == "train" else state.batch_stats
  leaves = jax.tree_util.tree_leaves
  for a, b in zip(leaves(after_step.batch_stats), leaves(expected), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  moved = [not np.allclose(a, b) for a, b in zip(leaves(expected), leaves(state.batch_stats))]
  assert all(moved) if batchnorm == "train" else not any(moved)
  scale = lambda s: s.params["visual"]["backbone"]["layer1_0"]["bn1"]["scale"]
  assert not np.array_equal(scale(after_step), scale(state))


# ---------------------------------------------------------------- layouts and weight files


@pytest.mark.parametrize("backbone", [*RESNETS, "vgg16"])
def test_full_size_layout_is_torchvisions(backbone):
  """Every torchvision key up to the classifier, with its shape, is one of ours, and the
  other way round (shapes only: torch's meta device and broadcast zeros allocate nothing)."""
  with torch.device("meta"):
    model = getattr(torchvision.models, backbone)(weights=None)
  head = layout.TORCHVISION_HEADS[backbone]
  theirs = {
    k: tuple(v.shape)
    for k, v in model.state_dict().items()
    if not k.startswith(head) and not k.endswith("num_batches_tracked")
  }
  shapes = jax.eval_shape(
    BACKBONES[backbone]().init, jax.random.key(0), jnp.zeros((1, 224, 224, 3))
  )
  zeros = jax.tree_util.tree_map(lambda x: np.broadcast_to(np.float32(0), x.shape), shapes)
  mine = {k: v.shape for k, v in interop.backbone_to_torchvision(zeros, backbone).items()}
  assert mine == theirs
  assert sum(np.prod(s) for k, s in theirs.items() if "running" not in k) == sum(
    x.size for x in jax.tree_util.tree_leaves(shapes["params"])
  )


@pytest.fixture(scope="module")
def resnet18_state():
  """A float32 torchvision ResNet-18 state dict (random weights), `fc` and
  `num_batches_tracked` included, as torchvision's files hold them."""
  model = torchvision_model("resnet18").float()
  model.train()(torch.randn(2, 3, 32, 32))  # num_batches_tracked 1, statistics moved
  return model.state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_torchvision_resnet_loads_from_each_file_kind(resnet18_state, tmp_path, suffix):
  path = tmp_path / f"resnet18{suffix}"
  if suffix == ".pth":
    torch.save(resnet18_state, path)
  else:
    weights.write_arrays({k: v.numpy() for k, v in resnet18_state.items()}, path)
  loaded = interop.load_torchvision_backbone(
    path, template("resnet18", dtype=jnp.float32), "resnet18"
  )
  np.testing.assert_array_equal(
    loaded["batch_stats"]["layer2_0"]["downsample_1"]["var"],
    resnet18_state["layer2.0.downsample.1.running_var"].numpy(),
  )
  np.testing.assert_array_equal(
    loaded["params"]["layer3_1"]["conv2"]["kernel"],
    resnet18_state["layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0),
  )
  back = interop.backbone_to_torchvision(loaded, "resnet18")
  expected = {
    k: v.numpy()
    for k, v in resnet18_state.items()
    if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
  }
  assert back.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_misfit_resnet_is_refused_naming_keys(resnet18_state):
  """A ResNet-18 file for a ResNet-34: the blocks ResNet-18 lacks are named."""
  state = {k: v.numpy() for k, v in resnet18_state.items()}
  with pytest.raises(interop.WeightImportError) as error:
    interop.backbone_from_torchvision(state, template("resnet34", dtype=jnp.float32), "resnet34")
  message = str(error.value)
  assert "missing keys: layer1.2.bn1.bias" in message and "layer3.5.conv2.weight" in message
  assert "num_batches_tracked" not in message and "fc." not in message


def test_pretrained_resnet_starts_training(resnet18_state, tmp_path):
  """with_pretrained_backbone puts the file's parameters and running statistics into a
  fresh training state, in the state's dtype."""
  from configs import default as default_config
  from schn_jax.training import loop, train

  path = tmp_path / "resnet18.safetensors"
  weights.write_arrays({k: v.numpy() for k, v in resnet18_state.items()}, path)
  config = default_config.base_config("fashion_mnist")
  config.backbone, config.pretrained_backbone = "resnet18", str(path)
  _, state = loop.build(config, 8, (32, 32, 3), 4, 10)
  started = train.with_pretrained_backbone(config, state)
  backbone = started.params["visual"]["backbone"]
  stats = started.batch_stats["visual"]["backbone"]
  np.testing.assert_array_equal(backbone["bn1"]["scale"], resnet18_state["bn1.weight"].numpy())
  np.testing.assert_array_equal(stats["bn1"]["mean"], resnet18_state["bn1.running_mean"].numpy())
  assert stats["layer4_1"]["bn2"]["var"].dtype == jnp.float32
  # Everything else is as it was.
  np.testing.assert_array_equal(
    started.params["visual"]["hash"]["linear"]["kernel"],
    state.params["visual"]["hash"]["linear"]["kernel"],
  )


# ---------------------------------------------------------------- a ResNet in the training loop

needs_fashion_mnist = support.needs_fashion_mnist


def tiny_resnet_config(**overrides):
  """configs/tiny.py with ResNet-18 (28x28 grayscale images: a 1x1 map after layer4)
  and fewer images: 128 sampled per iteration, two batches of 64."""
  from configs import tiny

  config = tiny.get_config()
  config.backbone, config.pretrained_backbone = "resnet18", "none"
  config.sample_size, config.data.num_database, config.data.query_per_class = 128, 300, 4
  config.eval.batch_size = 128
  config.update(overrides)
  return config


@needs_fashion_mnist
def test_resnet_loop_on_eight_devices_equals_one():
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(support.REPO),
  )
  result = subprocess.run(
    [sys.executable, __file__, "loop"],
    cwd=support.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  assert "OK loop" in result.stdout, result.stdout


def _loop_worker():
  """Two outer iterations of `training.loop.Iteration` (ResNet-18, BatchNorm in
  training mode) in float64 over one device and over 8, each holding 8 rows of a
  batch of 64: the codes identical, the per-step losses, backbone parameters and
  running statistics to 1e-9 relative. mmasia: BatchNorm acts in the cycle step both
  variants share (tomm's re-forward normalises alike, without moving the statistics:
  test_running_statistics_move_once_per_batch...), and eight float64 replicas of
  tomm's state (its D and G moments too) would take about 11 GiB instead of 7.5."""
  import tempfile

  jax.config.update("jax_enable_x64", True)
  from schn_jax import data as data_lib
  from schn_jax import sharding
  from schn_jax.training import loop

  assert jax.device_count() == 8, jax.devices()
  config = tiny_resnet_config(variant="mmasia", dtype="float64", max_iter=2)
  bits = config.code_lengths[0]
  data = data_lib.build_dataset(config.data, tempfile.mkdtemp(), config.seed)
  runs = {}
  for devices in (1, 8):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    pieces, state = loop.build(
      config, bits, (28, 28, 1), data.source.num_classes, len(data.split.database)
    )
    initial_stats = jax.device_get(state.batch_stats)
    iteration = loop.Iteration(config, data, pieces, mesh)
    state, losses = sharding.replicate(state, mesh), []
    for _ in range(config.max_iter):
      state, step_losses, _ = iteration(state)
      losses.append(step_losses)
    runs[devices] = (sharding.to_host(state.database_codes), losses, jax.device_get(state))
    # Eight float64 replicas of the training state and its gradient take most of this
    # test's memory: the one-device run's buffers and programs go first.
    del iteration, state
    jax.clear_caches()
  (codes_1, losses_1, state_1), (codes_8, losses_8, state_8) = runs[1], runs[8]
  np.testing.assert_array_equal(codes_8, codes_1)
  assert np.abs(codes_1).sum() > 0, "no codes learned: a vacuous check"
  compared = {
    "losses": (losses_8, losses_1),
    "backbone": (state_8.params["visual"]["backbone"], state_1.params["visual"]["backbone"]),
    "running statistics": (state_8.batch_stats, state_1.batch_stats),
  }
  worst = {}
  for name, (mine, reference) in compared.items():
    pairs = zip(jax.tree_util.tree_leaves(mine), jax.tree_util.tree_leaves(reference), strict=True)
    worst[name] = max(relative_error(a, b) for a, b in pairs)
    assert worst[name] <= 1e-9, (name, worst[name])
  moved = jax.tree_util.tree_map(
    lambda a, b: not np.array_equal(a, b), state_1.batch_stats, initial_stats
  )
  assert all(jax.tree_util.tree_leaves(moved)), "running statistics never moved"
  print("OK loop", {k: f"{v:.2g}" for k, v in worst.items()}, flush=True)


def _checkpoint(workdir, step):
  """A checkpoint's state as {key path: NumPy array}."""
  import orbax.checkpoint as ocp

  path = (workdir / "bits_16" / "checkpoints" / str(step) / "state").absolute()
  checkpointer = ocp.StandardCheckpointer()
  target = jax.tree_util.tree_map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), checkpointer.metadata(path).item_metadata
  )
  state = checkpointer.restore(path, target)
  return {
    jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(state)
  }


@needs_fashion_mnist
def test_resnet_run_resumes_bit_identically_and_evaluates_with_running_statistics(tmp_path):
  """A ResNet-18 run resumed from its iteration-1 checkpoint ends as the uninterrupted
  run does, running statistics included; the model restored from the run folder (and
  from an exported file) encodes the queries to the run's codes, which it does only
  with the running statistics."""
  import shutil

  from schn_jax import data as data_lib
  from schn_jax import inference
  from schn_jax.training import train

  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  config = tiny_resnet_config(max_iter=2)
  train.train_and_evaluate(config, straight)
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "bits_16" / "checkpoints" / "2")
  for name in ("metrics.json", "bits_16/codes.npz"):
    (resumed / name).unlink()
  train.train_and_evaluate(config, resumed)

  expected, got = _checkpoint(straight, 2), _checkpoint(resumed, 2)
  assert got.keys() == expected.keys() and any("batch_stats" in k for k in got)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  with (
    np.load(straight / "bits_16" / "codes.npz") as a,
    np.load(resumed / "bits_16" / "codes.npz") as b,
  ):
    for key in ("query_codes", "database_codes"):
      np.testing.assert_array_equal(a[key], b[key])
    query_codes = a["query_codes"]

  data = data_lib.build_dataset(config.data, str(resumed), config.seed, split_mode="load")
  (batch,) = data.batches(data.split.query, len(data.split.query), train=False)
  model = inference.TrainedModel.from_workdir(resumed)
  np.testing.assert_array_equal(model.encode(batch["image"]), query_codes)
  model.export(tmp_path / "model.safetensors")
  exported = inference.TrainedModel.from_weights(tmp_path / "model.safetensors")
  np.testing.assert_array_equal(exported.encode(batch["image"]), query_codes)
  fresh_statistics = inference.TrainedModel(
    model.config,
    model.bits,
    model.params,
    batch_stats=jax.tree_util.tree_map(np.ones_like, model.batch_stats),
  )
  assert (fresh_statistics.encode(batch["image"]) != query_codes).any()
  # The whole-model export keeps the running statistics too.
  whole = tmp_path / "schn.safetensors"
  exported = support.cli("schn_jax.export", f"--workdir={resumed}", "--part=all", f"--out={whole}")
  assert exported.returncode == 0, exported.stderr[-2000:]
  arrays, _ = weights.read_arrays(whole)
  statistics = {k: v for k, v in arrays.items() if k.startswith("batch_stats/")}
  flat = traverse_util.flatten_dict(model.batch_stats, sep="/")
  assert flat and statistics.keys() == {f"batch_stats/{k}" for k in flat}
  for key, value in flat.items():
    np.testing.assert_array_equal(statistics[f"batch_stats/{key}"], value)


if __name__ == "__main__":
  if sys.argv[1] == "loop":
    _loop_worker()
