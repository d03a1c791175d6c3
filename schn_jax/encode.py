"""Encodes images with a trained run into a codes file.

    python -m schn_jax.encode --workdir=RUN --bits=32 --images=FOLDER --out=codes.npz

--images is a folder (every image below it, sorted by path), an image-list
file (`path [0/1 flags...]` per line, paths relative to --root, default the
list's folder), an .npz with `images` (and optional `labels`), or
tfds:NAME:SPLIT. codes.npz holds `codes` (n, bits) float32 in {-1, +1},
`packed` (n, ceil(bits / 8)) uint8 (FAISS's layout), `paths` (n,), and
`labels` / `label_names` where known (--class_folders: the first folder level
is the class).

Batches are split over every local device. Work is saved in shards under
<out>.parts/ as it goes: after an interruption, the same command encodes only
what is missing, then writes --out and removes the shards.
"""

import logging

from absl import flags

from schn_jax import errors, files, inference, retrieval
from schn_jax.data import image_sets

_WORKDIR = flags.DEFINE_string("workdir", None, "A run folder written by train.py.")
_MODEL = flags.DEFINE_string(
  "model", None, "Instead of --workdir: a model file written by python -m schn_jax.export."
)
_BITS = flags.DEFINE_integer("bits", None, "Code length to use; default: the run's only one.")
_STEP = flags.DEFINE_integer(
  "step", None, "Checkpoint (outer iteration) to use; default: the newest that reads back."
)
_IMAGES = flags.DEFINE_string(
  "images", None, "Folder, image-list file, .npz of images, or tfds:NAME:SPLIT."
)
_OUT = flags.DEFINE_string("out", None, "The codes file (.npz) to write.")
_ROOT = flags.DEFINE_string(
  "root", None, "Image-list files: the folder their paths are relative to (default: the list's)."
)
_CLASS_FOLDERS = flags.DEFINE_bool(
  "class_folders", False, "Folders: the first folder level names the class (label)."
)
_TFDS_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir for tfds:NAME:SPLIT.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per batch, over all devices.")
_SHARD_SIZE = flags.DEFINE_integer("shard_size", retrieval.SHARD_SIZE, "Images per saved shard.")
flags.mark_flags_as_required(["images", "out"])


def main(argv):
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: give every setting as --flag=value")
  # Orbax and JAX log routine steps (checkpoint reads, backends) at INFO.
  for name in ("absl", "jax"):
    logging.getLogger(name).setLevel(logging.WARNING)
  for flag in (_BATCH_SIZE, _SHARD_SIZE):
    if flag.value <= 0:
      raise errors.UserError(f"--{flag.name}={flag.value}: give a positive number.")
  if bool(_WORKDIR.value) == bool(_MODEL.value):
    raise errors.UserError(
      "give the model to encode with: --workdir=RUN (a "
      "train.py run) or --model=FILE (an exported model)."
    )
  model = inference.load(_WORKDIR.value or _MODEL.value, _BITS.value, _STEP.value)
  image_set = image_sets.open_images(
    _IMAGES.value,
    root=_ROOT.value,
    class_folders=_CLASS_FOLDERS.value,
    tfds_data_dir=_TFDS_DATA_DIR.value,
    channels=model.channels,
  )
  files.check_outputs(
    [("--out", _OUT.value)],
    [("--images", _IMAGES.value if image_set.spec["kind"] != "tfds" else None)]
    + [("--model", _MODEL.value), ("--workdir", _WORKDIR.value)],
    folders=[("the run folder", _WORKDIR.value)],
  )
  if image_set.reads(_OUT.value):
    raise files.PathError(f"--out={_OUT.value} is one of the images to encode: write elsewhere.")
  item_codes = retrieval.encode_to_file(
    model, image_set, _OUT.value, batch_size=_BATCH_SIZE.value, shard_size=_SHARD_SIZE.value
  )
  print(
    f"{_OUT.value}: {len(item_codes)} codes of {item_codes.bits} bits "
    f"(checkpoint {model.step} of {model.workdir or model.weights_file})"
  )


def cli():
  errors.run(
    main,
    interrupted="finished shards are kept in <--out>.parts/; "
    "run the same command again to encode only the rest",
  )


if __name__ == "__main__":
  cli()
