r"""Prepares a TFDS dataset as array_record files, readable without TensorFlow.

  python -m schn_jax.data.prepare --dataset=cifar10 [--data_dir=DIR]

For the TFDS datasets a config names as data.name='tfds:<name>' (CIFAR-10 by
its plain name needs none of this: training downloads its python archive).
Generating a TFDS dataset needs TensorFlow, which the training environment
deliberately lacks (training reads the prepared files with
`tfds.data_source`). Run this once, with tensorflow-cpu installed, in this
or a separate environment:

  pip install tensorflow-cpu==2.21.0
"""

from absl import flags

from schn_jax import errors

TENSORFLOW_REQUIREMENT = "tensorflow-cpu==2.21.0"

_DATASET = flags.DEFINE_string("dataset", None, "TFDS name, e.g. cifar10.", required=True)
_DATA_DIR = flags.DEFINE_string(
  "data_dir",
  None,
  "TFDS data_dir (default: $TFDS_DATA_DIR or "
  "~/tensorflow_datasets); give the same as data.tfds_data_dir.",
)


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  try:
    import tensorflow  # noqa: F401  (only whether it is installed)
  except ImportError:
    raise errors.MissingDependencyError(
      f"preparing TFDS dataset {_DATASET.value!r} needs TensorFlow, which "
      "is not installed (on purpose: training never imports it); install "
      f"it with `pip install {TENSORFLOW_REQUIREMENT}`, then rerun this "
      "command"
    ) from None
  import tensorflow_datasets as tfds

  builder = tfds.builder(_DATASET.value, data_dir=_DATA_DIR.value)
  builder.download_and_prepare(file_format="array_record")
  print(f"{_DATASET.value} prepared as array_record in {builder.data_dir}")


if __name__ == "__main__":
  errors.run(main)
