"""Weights between schn-jax and torch: reference SCHN state dicts and torchvision AlexNet."""

import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from schn_jax import interop
from schn_jax.interop import torch_io
from schn_jax.models import SCHN, Discriminator
from schn_jax.models.visual import AlexNet
from schn_jax.parity.fixtures import Fixture

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
nn = torch.nn


def _template(module, *inputs):
  return jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]


def _assert_same_state_dict(actual, expected):
  assert set(actual) == set(expected)
  for key, value in expected.items():
    assert actual[key].dtype == np.float32, key
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def _within_parity_tolerance(ours, reference):
  """Largest |diff| and the issue's bound: 1e-4 absolute, or 1e-5 of the largest value."""
  error = float(np.max(np.abs(np.asarray(ours, np.float64) - reference)))
  return error, max(1e-4, 1e-5 * float(np.max(np.abs(reference))))


# ---- reference SCHN state dicts ----------------------------------------------------------


@pytest.mark.parametrize("variant", ["mmasia", "tomm"])
def test_reference_state_dict_round_trip_is_lossless(fixtures_root, variant):
  """Every key of the reference's state dict (the manifest's) survives ours-and-back bit for bit."""
  fixture = Fixture(fixtures_root / variant)
  schn_state, disc_state = fixture.state_dicts()
  bits, classes = fixture.dims()[1:3]
  template = _template(
    SCHN(variant, bits), jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, classes)), jnp.zeros((2, 2))
  )
  params = interop.schn_from_reference(schn_state, template, variant)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(template)
  _assert_same_state_dict(interop.schn_to_reference(params, variant), schn_state)

  assert (disc_state is not None) == (variant == "tomm")
  if disc_state is not None:
    disc_template = _template(Discriminator(), jnp.zeros((2, bits)), jnp.zeros((2, bits)))
    disc_params = interop.discriminator_from_reference(disc_state, disc_template)
    _assert_same_state_dict(interop.discriminator_to_reference(disc_params), disc_state)


def test_variants_are_not_interchangeable(fixtures_root):
  """An mmasia state dict does not load as tomm: the label reconstruction's shapes differ
  (and the GCN key is `gc` vs `gc1`); the error names those keys."""
  fixture = Fixture(fixtures_root / "mmasia")
  schn_state, _ = fixture.state_dicts()
  template = _template(
    SCHN("tomm", 32), jnp.zeros((2, 64, 64, 3)), jnp.zeros((2, 10)), jnp.zeros((2, 2))
  )
  with pytest.raises(interop.WeightImportError) as error:
    interop.schn_from_reference(schn_state, template, "tomm")
  message = str(error.value)
  assert "model_cycle.gcn.gc1.weight" in message  # missing
  assert "model_cycle.gcn.gc.weight" in message  # unexpected
  assert "model_cycle.model_label_rec.net.0.weight (1024, 4096)" in message  # misshapen


def test_random_small_discriminator_round_trip():
  """Our tree -> torch names -> our tree, on a code length no fixture uses."""
  discriminator = Discriminator()
  codes = jnp.zeros((3, 12))
  params = discriminator.init(jax.random.key(1), codes, codes)["params"]
  state = interop.discriminator_to_reference(params)
  assert state["model_imageD.net.0.weight"].shape == (1024, 12)  # torch (out, in)
  back = interop.discriminator_from_reference(state, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.device_get(params))


# ---- torchvision AlexNet -----------------------------------------------------------------


def randomize(model, seed):
  # torch's default init shrinks activations layer by layer, so fc7 would be tiny and
  # any 1e-4 tolerance trivially met; unit-variance weights keep fc7 of order one.
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for _, p in model.named_parameters():
      std = 1.0 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
      p.copy_(torch.randn(p.shape, generator=generator) * std)
  return model


def torch_fc7(model, images_nchw):
  with torch.no_grad():
    x = model.avgpool(model.features(torch.from_numpy(images_nchw)))
    return model.classifier[:6](torch.flatten(x, 1)).numpy()


@pytest.fixture(scope="module")
def torch_alexnet():
  return randomize(torchvision.models.alexnet().eval(), seed=0)


@pytest.fixture(scope="module")
def alexnet_checkpoint(torch_alexnet, tmp_path_factory):
  """The alexnet-owt-*.pth format: a plain state dict, classifier.6 included."""
  path = tmp_path_factory.mktemp("torchvision") / "alexnet-owt-random.pth"
  torch.save(torch_alexnet.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def alexnet_template():
  """The backbone's variables: parameters only (AlexNet has no BatchNorm)."""
  return {"params": _template(AlexNet(), jnp.zeros((1, 64, 64, 3)))}


def _ours_fc7(variables, images_nchw):
  return np.asarray(AlexNet().apply(variables, jnp.transpose(images_nchw, (0, 2, 3, 1))))


# 64: 1x1 final map, replicated by the pool; 224: the 6x6 map torchvision is built for;
# 300: an 8x8 map, so the adaptive pool's overlapping bins and the flatten order matter.
@pytest.mark.parametrize("size", [64, 224, 300])
def test_torchvision_checkpoint_gives_torch_fc7(
  torch_alexnet, alexnet_checkpoint, alexnet_template, size
):
  params = interop.load_torchvision_backbone(alexnet_checkpoint, alexnet_template, "alexnet")
  assert set(params) == {"params"}
  images = np.random.default_rng(size).standard_normal((2, 3, size, size), dtype=np.float32)
  reference = torch_fc7(torch_alexnet, images)
  assert np.abs(reference).max() > 0.5 and (reference > 0).mean() > 0.2  # non-trivial features
  error, tolerance = _within_parity_tolerance(_ours_fc7(params, images), reference)
  assert error <= tolerance


def test_export_loads_into_torch_and_reproduces_features(
  torch_alexnet, alexnet_checkpoint, alexnet_template, tmp_path
):
  params = interop.load_torchvision_backbone(alexnet_checkpoint, alexnet_template, "alexnet")
  exported = interop.backbone_to_torchvision(params, "alexnet")
  original = {
    k: v.numpy() for k, v in torch_alexnet.state_dict().items() if not k.startswith("classifier.6.")
  }
  _assert_same_state_dict(exported, original)

  # Through a file, as a user would hand the weights back to torch.
  path = tmp_path / "exported.pth"
  torch_io.save_state_dict(exported, path)
  fresh = randomize(torchvision.models.alexnet().eval(), seed=1)
  result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=False)
  assert sorted(result.missing_keys) == ["classifier.6.bias", "classifier.6.weight"]
  assert not result.unexpected_keys
  images = np.random.default_rng(7).standard_normal((2, 3, 64, 64), dtype=np.float32)
  np.testing.assert_array_equal(torch_fc7(fresh, images), torch_fc7(torch_alexnet, images))


# ---- refusing bad checkpoints ------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet_state(torch_alexnet):
  return {k: v.numpy() for k, v in torch_alexnet.state_dict().items()}


def _damaged(state, drop=(), add=(), reshape=()):
  state = dict(state)
  for key in drop:
    del state[key]
  for key in add:
    state[key] = np.zeros((4,), np.float32)
  for key in reshape:
    state[key] = state[key][:, :-1]
  return state


@pytest.mark.parametrize(
  "damage, named",
  [
    ({"drop": ["features.3.bias"]}, ["missing keys: features.3.bias"]),
    ({"add": ["features.12.weight"]}, ["unexpected keys: features.12.weight"]),
    ({"reshape": ["features.6.weight"]}, ["features.6.weight (384, 191, 3, 3)"]),
    (
      {
        "drop": ["classifier.1.weight", "features.0.bias"],
        "add": ["classifier.7.bias"],
        "reshape": ["classifier.4.weight"],
      },
      [
        "classifier.1.weight",
        "features.0.bias",
        "classifier.7.bias",
        "classifier.4.weight (4096, 4095)",
      ],
    ),
  ],
  ids=["missing", "extra", "misshapen", "all_at_once"],
)
def test_misfit_state_dict_is_refused_naming_keys(alexnet_state, alexnet_template, damage, named):
  with pytest.raises(interop.WeightImportError) as error:
    interop.backbone_from_torchvision(
      _damaged(alexnet_state, **damage), alexnet_template, "alexnet"
    )
  for text in named:
    assert text in str(error.value)
  # Keys that fit are not blamed.
  assert "features.10.weight" not in str(error.value)


def test_misfit_checkpoint_file_is_refused(alexnet_state, alexnet_template, tmp_path):
  path = tmp_path / "bad.pth"
  torch_io.save_state_dict(
    _damaged(
      alexnet_state, drop=["features.8.weight"], add=["head.weight"], reshape=["features.0.weight"]
    ),
    path,
  )
  with pytest.raises(interop.WeightImportError) as error:
    interop.load_torchvision_backbone(path, alexnet_template, "alexnet")
  message = str(error.value)
  assert str(path) in message
  for key in ["features.8.weight", "head.weight", "features.0.weight (64, 2, 11, 11)"]:
    assert key in message


@pytest.mark.parametrize("content", [b"not a checkpoint\n", b""], ids=["text", "empty"])
def test_non_checkpoint_file_is_refused(tmp_path, alexnet_template, content):
  path = tmp_path / "alexnet.pth"
  path.write_bytes(content)
  with pytest.raises(ValueError, match="is not a readable torch checkpoint") as error:
    interop.load_torchvision_backbone(path, alexnet_template, "alexnet")
  assert str(path) in str(error.value)


def test_checkpoint_without_state_dict_is_refused(tmp_path, alexnet_template):
  path = tmp_path / "list.pth"
  torch.save([torch.zeros(3)], path)
  with pytest.raises(ValueError, match="does not hold a state dict"):
    interop.load_torchvision_backbone(path, alexnet_template, "alexnet")


def test_missing_checkpoint_file(tmp_path, alexnet_template):
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    interop.load_torchvision_backbone(tmp_path / "nowhere.pth", alexnet_template, "alexnet")


def test_wrapped_state_dict_is_unwrapped(tmp_path):
  """Training checkpoints often nest the weights under 'state_dict'."""
  path = tmp_path / "wrapped.pth"
  torch.save({"state_dict": {"a.weight": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}, path)
  state = torch_io.load_state_dict(path)
  assert list(state) == ["a.weight"]
  np.testing.assert_array_equal(state["a.weight"], np.arange(6.0, dtype=np.float32).reshape(2, 3))


def test_torch_is_imported_only_for_checkpoint_files():
  code = (
    "import sys, schn_jax.interop, schn_jax.models, schn_jax.parity.check; "
    "sys.exit('torch' in sys.modules)"
  )
  repo = pathlib.Path(__file__).resolve().parents[1]
  assert subprocess.run([sys.executable, "-c", code], cwd=repo, timeout=120).returncode == 0
