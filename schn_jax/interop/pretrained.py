"""ImageNet weights for the backbones: torchvision's published files, and the file a
config's backbone starts from.

`config.pretrained_backbone` is one of
  'torchvision'  the file below for `config.backbone`, downloaded once and cached
                 (schn_jax.download: cache folder, mirrors, working offline);
  'none'         random initial weights, on purpose;
  a path         a torchvision state dict (.pth; .safetensors or .npz need no torch).
Left unset, it is refused for a backbone listed below, so that none of them trains
from random weights by accident (the run would give no sign of it). The small CNN
has no published weights and needs none.

torchvision's files are .pth: reading them needs torch (requirements-dev.txt), which
is checked before anything is downloaded.
"""

import importlib.util
import os

from schn_jax import download, errors

TORCHVISION = "torchvision"
FROM_SCRATCH = "none"

_URL = "https://download.pytorch.org/models/"
# backbone -> torchvision's ImageNet weights (IMAGENET1K_V1); the checksum is the leading
# digits of the file's SHA-256, which torchvision puts in the name.
TORCHVISION_WEIGHTS = {
  "alexnet": download.RemoteFile(f"{_URL}alexnet-owt-7be5be79.pth", "sha256:7be5be79"),
  "resnet18": download.RemoteFile(f"{_URL}resnet18-f37072fd.pth", "sha256:f37072fd"),
  "resnet34": download.RemoteFile(f"{_URL}resnet34-b627a593.pth", "sha256:b627a593"),
  "resnet50": download.RemoteFile(f"{_URL}resnet50-0676ba61.pth", "sha256:0676ba61"),
  "vgg16": download.RemoteFile(f"{_URL}vgg16-397923af.pth", "sha256:397923af"),
}


def _choice(config):
  """config.pretrained_backbone, its keywords in any case ('None' is what people type)."""
  choice = config.pretrained_backbone
  if choice is not None and choice.lower() in (TORCHVISION, FROM_SCRATCH):
    return choice.lower()
  return choice


def remote_files(config) -> list:
  """The downloads `config.pretrained_backbone` needs (none, or the backbone's weights).

  Raises ConfigError when it is unset for a backbone with published weights, or
  'torchvision' for a backbone without; MissingDependencyError for torchvision's
  weights without torch to read them.
  """
  choice, backbone = _choice(config), config.backbone
  if choice is None and backbone in TORCHVISION_WEIGHTS:
    raise errors.ConfigError(
      f"config.pretrained_backbone is not set, and backbone {backbone!r} is meant to start "
      "from ImageNet weights: pass --config.pretrained_backbone=torchvision (downloads "
      "them), --config.pretrained_backbone=PATH (a torchvision state dict) or "
      "--config.pretrained_backbone=none (random initial weights)"
    )
  if choice != TORCHVISION:
    return []
  if backbone not in TORCHVISION_WEIGHTS:
    raise errors.ConfigError(
      f"config.pretrained_backbone='torchvision': torchvision publishes no weights for "
      f"backbone {backbone!r} (it does for {', '.join(TORCHVISION_WEIGHTS)}); "
      "pass --config.pretrained_backbone=none or =PATH"
    )
  if importlib.util.find_spec("torch") is None:
    raise errors.MissingDependencyError(
      "config.pretrained_backbone='torchvision': torchvision's weights are .pth files, "
      "and reading them needs PyTorch, which is not installed: pip install torch (CPU "
      "build; the version in requirements-dev.txt), or pass a .safetensors copy as "
      "--config.pretrained_backbone=PATH"
    )
  return [TORCHVISION_WEIGHTS[backbone]]


def weights_path(config) -> str | None:
  """The weight file the backbone starts from, downloaded first when 'torchvision'
  (a cached file is only checked), or None for random initial weights."""
  choice = _choice(config)
  if choice in (None, FROM_SCRATCH):
    return None
  if choice == TORCHVISION:
    return str(download.fetch_all(remote_files(config))[0])
  return os.path.expanduser(choice)
