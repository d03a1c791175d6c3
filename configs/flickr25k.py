"""MIRFlickr-25K (38 labels), image list under --config.data.root.

    python train.py --config=configs/flickr25k.py --workdir=runs/flickr25k \
        --config.data.root=/data/mirflickr

1,000 random queries, database = the other 24,000, 5,000 sampled per outer
iteration, 150 iterations; mAP@5000. Files expected under the root: docs/data.md.
"""

from configs import default


def get_config():
  config = default.base_config("flickr25k")
  config.pretrained_backbone = "torchvision"  # AlexNet's ImageNet weights, downloaded once
  config.data.num_train = None  # sample from the whole database (ADSH)
  config.sample_size = 5000
  config.max_iter = 150
  config.eval.topk = 5000
  return config
