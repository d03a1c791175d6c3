"""NUS-WIDE (21 most frequent labels), image list under --config.data.root.

    python train.py --config=configs/nuswide.py --workdir=runs/nuswide \
        --config.data.root=/data/nus-wide

2,100 queries (100 per label), database = the rest (193,734 in the usual
list), 10,500 database points sampled per outer iteration,
150 iterations; mAP@5000. The files expected under the root: docs/data.md.
"""

from configs import default


def get_config():
  config = default.base_config("nuswide")
  config.pretrained_backbone = "torchvision"  # AlexNet's ImageNet weights, downloaded once
  # The asymmetric loop samples from the whole database (ADSH), not a fixed train set.
  config.data.train_per_class = None
  config.sample_size = 10500
  config.max_iter = 150
  config.eval.topk = 5000
  return config
