"""ImageNet-100 with HashNet's lists (test / database / train .txt) under the root.

    python train.py --config=configs/imagenet100.py --workdir=runs/imagenet100 \
        --config.data.root=/data/imagenet

5,000 queries, 128,503 database images, training on the 13,000 of the train
list; mAP@1000. The database is encoded with the visual network, as for COCO.
"""

from configs import default


def get_config():
  config = default.base_config("imagenet100")
  config.pretrained_backbone = "torchvision"  # AlexNet's ImageNet weights, downloaded once
  config.sample_size = 13000
  config.eval.topk = 1000
  config.eval.database_codes = "encoded"
  return config
