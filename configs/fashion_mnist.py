"""Fashion-MNIST, the offline default (Debian's dataset-fashion-mnist): small CNN.

    python train.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist

Protocol (SPEC section 5): 1,000 queries (100 per class), database = the other
69,000 images, training points sampled from the database; mAP@all.
"""

from configs import default


def get_config():
  config = default.base_config("fashion_mnist")
  config.backbone = "small_cnn"
  config.data.image_size = 28
  config.data.test_resize = None
  config.data.num_channels = 1
  config.data.augment = False
  return config
