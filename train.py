"""Trains SCHN: python train.py --config=configs/fashion_mnist.py --workdir=DIR.

Any config key can be overridden: --config.variant=mmasia --config.code_lengths='(32,)'.
A run resumes from the last checkpoint in --workdir.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from schn_jax.training.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Orbax logs every checkpoint step at INFO; progress goes to the bar and console lines.
  logging.set_verbosity(logging.WARNING)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
