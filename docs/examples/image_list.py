"""A dataset of your own in the image-list format: the worked example of docs/data.md.

    python train.py --config=docs/examples/image_list.py --config.data.root=runs/my_dataset --workdir=runs/my_dataset_run

`data.root` holds `images.txt` (one line per image: its path relative to the
root, then one 0/1 flag per label; the number of labels is read from the
file) and the images. Copy this file next to your data and change what
differs: the protocol, the image size and backbone, the schedule.
"""

from configs import default


def get_config():
  config = default.base_config("image_list")
  config.data.image_list = "images.txt"
  # Protocol: 20 queries per label; the rest is the database, trained on.
  # Alternatives: protocol="random" with num_query=N (multi-label data), or
  # protocol="lists" with query_list / database_list / train_list files.
  config.data.protocol = "per_class"
  config.data.query_per_class = 20
  config.data.num_query = None
  # Small grayscale images at native size: the small CNN, no resizing or
  # augmentation. For photos keep the defaults (AlexNet, 224 crops of 256) and
  # set config.pretrained_backbone to ImageNet weights (.pth or .safetensors).
  config.backbone = "small_cnn"
  config.data.image_size = 28
  config.data.test_resize = None
  config.data.augment = False
  config.variant = "mmasia"
  config.code_lengths = (32,)
  config.learning_rate = 1e-3
  config.sampling = "cover"
  config.sample_size = 1000
  config.batch_size = 100
  config.max_epoch = 1
  config.max_iter = 6
  config.eval_iter = 3
  return config
