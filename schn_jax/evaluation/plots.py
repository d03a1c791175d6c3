"""PR-curve and P@N plots from `metrics.evaluate_codes` output, and the
retrieval grid (queries beside their nearest database images)."""

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

matplotlib.use("Agg")  # Files only; evaluation runs on headless machines.
import matplotlib.pyplot as plt

from schn_jax import files


def plot_curves(metrics, path):
  """Writes a PNG: precision-recall over Hamming radii, and precision@N."""
  curves = metrics["curves"]
  figure, (pr_axis, pn_axis) = plt.subplots(1, 2, figsize=(10, 4))
  pr_axis.plot(curves["recall_at_radius"], curves["precision_at_radius"], marker=".")
  pr_axis.set(
    xlabel="recall",
    ylabel="precision",
    xlim=(0, 1),
    ylim=(0, 1),
    title="precision-recall over Hamming radius",
  )
  pn_axis.plot(curves["n"], curves["precision_at_n"], marker=".")
  pn_axis.set(
    xscale="log",
    xlabel="N (top ranked items)",
    ylabel="precision@N",
    ylim=(0, 1),
    title="precision@N",
  )
  figure.suptitle(
    f"{metrics['bits']} bits, mAP@"
    f"{'all' if metrics['topk'] == -1 else metrics['topk']} = "
    f"{metrics['map']:.4f} ({metrics['ties']})"
  )
  figure.tight_layout()
  with files.replaced(path) as tmp:
    figure.savefig(tmp, dpi=100, format="png")
  plt.close(figure)


# ---------------------------------------------------------------- retrieval grid

GRID_COLORS = {
  True: (30, 150, 50),
  False: (210, 40, 40),
  None: (170, 170, 170),
  "query": (40, 80, 200),
}


class GridLayout:
  """Pixel geometry of a retrieval grid, shared by the drawing and its tests.

  Each row: the query's cell, a gap, then up to `columns` neighbour cells. A
  cell is the thumbnail inside a coloured border, with a caption band below.
  """

  border = 4
  caption = 18
  pad = 6
  gap = 24
  header = 22

  def __init__(self, num_rows, columns, thumbnail):
    self.num_rows, self.columns, self.thumbnail = num_rows, columns, thumbnail
    self.cell_width = thumbnail + 2 * self.border
    self.cell_height = self.cell_width + self.caption
    self.width = self.pad + self.cell_width + self.gap + columns * (self.cell_width + self.pad)
    self.height = self.header + num_rows * (self.cell_height + self.pad) + self.pad

  def cell(self, row, column):
    """(left, top) of a cell's border; column -1 is the query."""
    top = self.header + row * (self.cell_height + self.pad)
    left = self.pad
    if column >= 0:
      left += self.cell_width + self.gap + column * (self.cell_width + self.pad)
    return left, top


def retrieval_grid(rows, path, *, thumbnail=96, columns=None):
  """Writes a PNG: each query beside its neighbours, ranked left to right.

  Args:
    rows: [(query image, query caption, [(image, caption, correct), ...])];
      images uint8 (H, W) or (H, W, C), or None (a grey placeholder); correct is True (green border: shares
      a label with the query), False (red) or None (grey: labels unknown).
    path: where the PNG goes.
    thumbnail: side of the square each image is fitted into.
    columns: neighbour columns (default: the longest row).

  Returns:
    the GridLayout drawn.
  """
  columns = columns or max([len(cells) for _, _, cells in rows] + [1])
  layout = GridLayout(len(rows), columns, thumbnail)
  canvas = Image.new("RGB", (layout.width, layout.height), "white")
  draw = ImageDraw.Draw(canvas)
  font = ImageFont.load_default(size=12)
  draw.text((layout.pad, 4), "query", fill="black", font=font)
  draw.text(
    (layout.cell(0, 0)[0], 4),
    "nearest first (green: shares a label with the query, red: does not, grey: unknown)",
    fill="black",
    font=font,
  )

  def put(image, caption, color, left, top):
    draw.rectangle(
      [left, top, left + layout.cell_width - 1, top + layout.cell_width - 1], fill=color
    )
    inner = Image.new("RGB", (thumbnail, thumbnail), "white" if image is not None else "lightgrey")
    if image is not None:
      picture = _fit(Image.fromarray(_rgb(image)), thumbnail)
      inner.paste(picture, ((thumbnail - picture.width) // 2, (thumbnail - picture.height) // 2))
    canvas.paste(inner, (left + layout.border, top + layout.border))
    text_width = draw.textlength(caption, font=font)
    draw.text(
      (left + (layout.cell_width - text_width) / 2, top + layout.cell_width + 2),
      caption,
      fill="black",
      font=font,
    )

  for r, (query_image, query_caption, cells) in enumerate(rows):
    put(query_image, query_caption, GRID_COLORS["query"], *layout.cell(r, -1))
    for c, (image, caption, correct) in enumerate(cells[:columns]):
      put(image, caption, GRID_COLORS[correct], *layout.cell(r, c))
  with files.replaced(path) as tmp:
    canvas.save(tmp, format="PNG")
  return layout


def _rgb(image):
  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return image


def _fit(picture, side):
  """The picture scaled so its longer side is `side`; small images are
  enlarged with nearest-neighbour so their pixels stay sharp."""
  scale = side / max(picture.size)
  size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
  return picture.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR)
