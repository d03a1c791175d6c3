"""CIFAR-10 under SCHN's (ADSH's) protocol: AlexNet at 224, ImageNet weights you provide.

    python -m schn_jax.data.prepare --dataset=cifar10      # once; needs tensorflow-cpu
    python train.py --config=configs/cifar.py --workdir=runs/cifar \
        --config.pretrained_backbone=/path/to/alexnet-owt-7be5be79.pth

1,000 queries (100 per class), database = the other 59,000 images, 5,000 of
them sampled per outer iteration; mAP@all. Without pretrained_backbone the
backbone starts from random weights (not what the paper reports).
"""

from configs import default


def get_config():
  config = default.base_config("cifar10")
  config.backbone = "alexnet"
  return config
