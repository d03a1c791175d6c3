"""MS-COCO (80 labels) with HashNet's lists (test / database / train .txt) under the root.

    python train.py --config=configs/coco.py --workdir=runs/coco \
        --config.data.root=/data/coco

5,000 queries, 112,218 database images, training on the 10,000 of the train
list (all of them each outer iteration); mAP@5000. Learned codes exist only
for the train list, so the database is encoded with the visual network
(eval.database_codes='encoded', the inductive mode).
"""

from configs import default


def get_config():
  config = default.base_config("coco")
  config.pretrained_backbone = "torchvision"  # AlexNet's ImageNet weights, downloaded once
  config.sample_size = 10000
  config.eval.topk = 5000
  config.eval.database_codes = "encoded"
  return config
