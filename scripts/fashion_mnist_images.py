"""Writes Fashion-MNIST images as PNG files: a folder of "your own" images for the
retrieval tools and the image-list dataset examples (README, docs/data.md).

    python -m scripts.fashion_mnist_images --out=runs/my_images --first=60000 --count=2000
    python -m scripts.fashion_mnist_images --out=runs/my_dataset --count=3000 --list=images.txt

(from the repository root, so that schn_jax is importable without installing it).

Images are numbered as the source is (train 0-59,999, then test 60,000-69,999)
and written to OUT/<class>/<number>.png. --list also writes OUT/<list>, one
line per image: `<class>/<number>.png` and ten 0/1 label flags.
"""

import pathlib

from absl import app, flags
from PIL import Image

from schn_jax.data import sources

_OUT = flags.DEFINE_string("out", None, "Folder to write into.")
_FIRST = flags.DEFINE_integer("first", 0, "First image number (0-69,999).")
_COUNT = flags.DEFINE_integer("count", 1000, "How many images.")
_LIST = flags.DEFINE_string("list", None, "Also write this list file in --out.")
flags.mark_flag_as_required("out")


def main(argv):
  del argv
  fashion = sources.fashion_mnist_source()
  numbers = range(_FIRST.value, min(_FIRST.value + _COUNT.value, len(fashion)))
  out = pathlib.Path(_OUT.value)
  lines = []
  for number in numbers:
    label = int(fashion.labels[number].argmax())
    name = f"{sources.FASHION_MNIST_CLASSES[label]}/{number:05d}.png"
    (out / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(fashion.images[number, ..., 0]).save(out / name)
    lines.append(name + " " + " ".join("1" if j == label else "0" for j in range(10)))
  if _LIST.value:
    (out / _LIST.value).write_text("\n".join(lines) + "\n")
  print(f"{out}: {len(numbers)} images" + (f", list {out / _LIST.value}" if _LIST.value else ""))


if __name__ == "__main__":
  app.run(main)
