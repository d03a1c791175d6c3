"""Weight files without torch: .safetensors / .npz round trips, refusals, and the
torchvision AlexNet path read from .safetensors as from .pth."""

import subprocess
import sys

import numpy as np
import pytest

from schn_jax import errors, interop
from schn_jax.interop import layout, weights


def small_tree(seed=0):
  rng = np.random.default_rng(seed)
  return {
    "visual": {
      "backbone": {
        "features_0": {
          "kernel": rng.standard_normal((3, 3, 1, 4)).astype(np.float32),
          "bias": rng.standard_normal(4).astype(np.float32),
        }
      },
      "hash": {
        "linear": {
          "kernel": rng.standard_normal((8, 16)).astype(np.float32),
          "bias": np.zeros(16, np.float32),
        }
      },
    }
  }


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_params_round_trip_bit_exact_with_metadata(tmp_path, suffix):
  params = small_tree()
  path = tmp_path / f"w{suffix}"
  weights.save_params(params, path, {"bits": 16, "note": "x"})
  loaded, metadata = weights.load_params(path, params)
  for a, b in zip(*(sorted(weights.params_to_arrays(t).items()) for t in (params, loaded))):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
  assert metadata == {"bits": "16", "note": "x"}


def test_mismatched_files_are_refused_naming_every_key(tmp_path):
  params = small_tree()
  arrays = weights.params_to_arrays(params)
  arrays.pop("visual/hash/linear/bias")
  arrays["visual/extra"] = np.zeros(2, np.float32)
  arrays["visual/backbone/features_0/bias"] = np.zeros(5, np.float32)
  weights.write_arrays(arrays, tmp_path / "w.safetensors")
  with pytest.raises(errors.UserError) as error:
    weights.load_params(tmp_path / "w.safetensors", params)
  message = str(error.value)
  assert "missing: visual/hash/linear/bias" in message
  assert "unexpected: visual/extra" in message
  assert "misshapen: visual/backbone/features_0/bias (5,) (expected (4,))" in message
  (tmp_path / "x.safetensors").write_bytes(b"junk")
  with pytest.raises(weights.WeightFileError, match="not a readable .safetensors"):
    weights.read_arrays(tmp_path / "x.safetensors")
  with pytest.raises(weights.WeightFileError, match="unknown weight file type '.bin'"):
    weights.read_arrays(tmp_path / "w.bin")
  with pytest.raises(FileNotFoundError, match="gone.npz: no such weight file"):
    weights.read_arrays(tmp_path / "gone.npz")


def alexnet_shaped_template():
  """AlexNet's tree with small layers: the conversion only transposes, so the rules
  are exercised without 61M parameters."""
  rng = np.random.default_rng(1)
  template = {}
  channels = 3
  for n in layout.BACKBONE_CONVS["alexnet"]:
    template[f"features_{n}"] = {
      "kernel": rng.standard_normal((3, 3, channels, 4)).astype(np.float32),
      "bias": rng.standard_normal(4).astype(np.float32),
    }
    channels = 4
  for n, (fan_in, fan_out) in zip(layout.CLASSIFIER_FCS["alexnet"], ((36, 8), (8, 8))):
    template[f"classifier_{n}"] = {
      "kernel": rng.standard_normal((fan_in, fan_out)).astype(np.float32),
      "bias": rng.standard_normal(fan_out).astype(np.float32),
    }
  return template


def test_torchvision_backbone_from_safetensors_equals_pth_and_needs_no_torch(tmp_path):
  backbone = {"params": alexnet_shaped_template()}
  state_dict = interop.backbone_to_torchvision(backbone, "alexnet")
  state_dict["classifier.6.weight"] = np.zeros((10, 8), np.float32)  # ImageNet head: ignored
  state_dict["classifier.6.bias"] = np.zeros(10, np.float32)
  weights.write_arrays(state_dict, tmp_path / "alexnet.safetensors")
  loaded = interop.load_torchvision_backbone(tmp_path / "alexnet.safetensors", backbone, "alexnet")
  for name, value in weights.params_to_arrays(backbone).items():
    np.testing.assert_array_equal(weights.params_to_arrays(loaded)[name], value)
  # The same file read in a fresh interpreter: torch is never imported.
  code = (
    "import sys; from schn_jax import interop, inference, retrieval; "
    "from schn_jax.interop import weights; "
    f"weights.read_arrays({str(tmp_path / 'alexnet.safetensors')!r}); "
    'print("torch" in sys.modules)'
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "False"
  pytest.importorskip("torch")
  weights.write_arrays(state_dict, tmp_path / "alexnet.pth")
  from_pth = interop.load_torchvision_backbone(tmp_path / "alexnet.pth", backbone, "alexnet")
  for name, value in weights.params_to_arrays(loaded).items():
    np.testing.assert_array_equal(weights.params_to_arrays(from_pth)[name], value)
