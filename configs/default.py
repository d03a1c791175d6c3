"""Hyper-parameters shared by every dataset: the reference's (docs/method.md).

Not a runnable config by itself; configs/<dataset>.py build on `base_config`.
"""

import ml_collections
from ml_collections import config_dict

from schn_jax.data import default_data_config


def base_config(dataset):
  config = ml_collections.ConfigDict()
  config.variant = "tomm"  # "mmasia" (no discriminator) or "tomm"
  config.code_lengths = (12, 24, 32, 48)
  # "alexnet", "resnet18", "resnet34", "resnet50", "vgg16" (torchvision's layouts;
  # models/visual.py) or "small_cnn" (small images, no published weights).
  config.backbone = "alexnet"
  # BatchNorm while training (the ResNets): "train" normalises with the global batch's
  # statistics and updates the running ones (torch's model.train(); any device count
  # gives the same step), "frozen" with the running statistics, never updated. "train"
  # by default: the global batch of 64 gives stable statistics, it works from random
  # weights too (frozen ones leave a fresh ResNet unnormalised), and the statistics
  # follow the data rather than ImageNet's. Evaluation uses the running statistics.
  config.batchnorm = "train"
  # ImageNet weights to start the backbone from: "torchvision" (downloaded, cached),
  # a path to a torchvision state dict, or "none" (random). Unset is refused for a
  # backbone with published weights (schn_jax/interop/pretrained.py).
  config.pretrained_backbone = config_dict.placeholder(str)
  config.dropout_rate = 0.5
  config.learning_rate = 4e-5  # all three Adam optimizers
  config.weight_decay = 1e-5  # L2 added to the gradient, as torch's Adam
  # TOMM: the D and G rates are divided by `factor` at the end of the listed 0-based
  # outer iterations; the cycle rate never changes. The reference's rule: (5, 40)
  # when max_iter == 50, (130,) for any other max_iter.
  config.adversarial_lr_decay = ml_collections.ConfigDict(
    dict(factor=5.0, milestones_if_max_iter_50=(5, 40), milestones=(130,))
  )
  # All parameters' cycle-loss rate is divided by `factor` at the end of the listed
  # 0-based outer iterations. The reference never decays it: no milestones.
  config.cycle_lr_decay = ml_collections.ConfigDict(dict(factor=10.0, milestones=()))
  # What the G step does to a cycle parameter its loss does not reach (the latent
  # hash head): "torch18" (the version the reference pins: zero_grad() leaves zero
  # gradients, so Adam still steps it with weight decay alone) or "torch2"
  # (gradients set to None: Adam skips it).
  config.optimizer_semantics = "torch18"
  config.dtype = "float32"  # "float64" (parity checks) needs jax_enable_x64
  config.alpha = 2.0  # DCC weight of U_label
  config.beta = 0.1  # DCC weight of U_latent
  config.gamma = 10.0  # quantisation weight (loss and DCC)
  config.sample_size = 5000  # ns: database points sampled per outer iteration
  # How each iteration's sample is drawn: "uniform" (the reference: anew each
  # iteration) or "cover" (blocks of a database permutation; full coverage of the
  # learned database codes after N / sample_size iterations).
  config.sampling = "uniform"
  # Database codes before the first iteration: "zeros" (the reference) or
  # "label_codes" (one seeded random code per label pattern; training/loop.py).
  config.database_init = "zeros"
  config.max_iter = 50  # outer iterations
  config.max_epoch = 3  # epochs over the sample per outer iteration
  config.batch_size = 64  # global batch, split across devices
  # A training pool stored at the served size that needs no augmentation and takes at
  # most this many MiB (uint8) stays on device: each iteration is then one program.
  # Otherwise the host streams chunks of stream_chunk batches (docs/performance.md).
  config.device_pool_mb = 2048
  config.stream_chunk = 8
  config.eval_iter = 10  # evaluate every this many outer iterations
  config.checkpoint_every = 1  # outer iterations between checkpoints
  config.seed = 999
  config.data = default_data_config(dataset)
  config.eval = ml_collections.ConfigDict(
    dict(
      topk=-1,  # mAP@K; -1 = all
      ties="stable",  # "stable", "reference" or "tie_aware"
      database_codes="learned",  # "learned" (asymmetric, the reference) or "encoded"
      batch_size=256,
    )
  )
  return config
