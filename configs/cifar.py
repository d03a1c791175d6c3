"""CIFAR-10 under SCHN's (ADSH's) protocol: AlexNet at 224 from torchvision's ImageNet weights.

    python train.py --config=configs/cifar.py --workdir=runs/cifar

The first run downloads the CIFAR-10 python archive (163 MiB) and the AlexNet
weights (233 MiB; reading them needs torch), checks them and caches them
(docs/data.md: the cache folder, mirrors, working offline). --config.data.name=tfds:cifar10 reads a prepared TFDS
copy instead; --config.pretrained_backbone=PATH starts from another weight file,
=none from random weights (not what the paper reports).

1,000 queries (100 per class), database = the other 59,000 images, 5,000 of
them sampled per outer iteration; mAP@all.
"""

from configs import default


def get_config():
  config = default.base_config("cifar10")
  config.backbone = "alexnet"
  config.pretrained_backbone = "torchvision"
  return config
