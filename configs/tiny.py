"""A tiny configuration for tests and quick checks (seconds on a CPU).

    python train.py --config=configs/tiny.py --workdir=/tmp/schn_tiny

Fashion-MNIST scaled down: 100 queries (10 per class), 1,000
database images, 512 per iteration (covering the database in two), one code length.
"""

from configs import fashion_mnist


def get_config():
  config = fashion_mnist.get_config()
  config.code_lengths = (16,)
  config.data.query_per_class = 10
  config.data.num_database = 1000
  config.sampling = "cover"
  config.sample_size = 512
  config.batch_size = 64
  config.learning_rate = 1e-3
  config.max_iter = 2
  config.max_epoch = 1
  config.eval_iter = 1
  config.eval.batch_size = 500
  return config
