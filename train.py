"""Trains SCHN: python train.py --config=configs/fashion_mnist.py --workdir=DIR.

Any config key can be overridden: --config.variant=mmasia --config.code_lengths='(32,)'.
A run resumes from the last checkpoint in --workdir.

What a config downloads (CIFAR-10's archive, torchvision's ImageNet weights for
config.pretrained_backbone=torchvision) is fetched, checked and cached before
anything is written to --workdir; $SCHN_JAX_CACHE moves the cache folder
(docs/data.md, "Downloads").

Several hosts: run the same command on every host. On Cloud TPU pods (and
SLURM or Open MPI clusters) the environment names the coordinator and the
processes, so --distributed is enough; elsewhere give them as flags, e.g. on
two machines:

    python train.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0
    python train.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=1
"""

import logging

import jax
from absl import flags
from ml_collections import config_flags

from schn_jax import errors
from schn_jax.training.train import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a configs/*.py file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process run; the coordinator, process count and id come "
  "from the flags below, or from the environment where they are absent (TPU pods, SLURM, MPI).",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0; implies --distributed."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  # Orbax logs every checkpoint step at INFO through absl's logger, JAX its backend
  # probing and tensorboardX each tag it renames; quiet those loggers alone, so
  # this project's INFO lines (dataset, resume, mAP) still show.
  for name in ("absl", "jax", "tensorboardX"):
    logging.getLogger(name).setLevel(logging.WARNING)
  config = _CONFIG.value
  try:
    config.get("variant")  # ml_collections reports a config file it could not load on first use
  except OSError as error:
    raise errors.UserError(
      f"--config: cannot load the config file: {str(error).splitlines()[-1].strip()}"
    ) from None
  if _DISTRIBUTED.value or _COORDINATOR.value:
    # Before any other JAX call: it decides which devices this process sees.
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
  errors.run(
    main,
    interrupted="the last finished iteration's checkpoint is kept; "
    "run the same command again to resume",
  )
