"""Prints the import graph between schn_jax's parts and checks its layering.

    python scripts/import_graph.py

A part is a subpackage of schn_jax (training, data, ...) or a top-level module
(schn_jax/inference.py, ...); configs/ and the entry points (train.py, eval.py)
are parts too. Prints each part's imports of other parts, then checks:
- no cycle between parts;
- no part of schn_jax imports an entry point or configs;
- nothing in schn_jax outside schn_jax/parity imports schn_jax.parity.
Exits 1 when a check fails.
"""

import ast
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train", "eval")


def part_of_module(name):
  """'schn_jax.training.loop' -> 'schn_jax.training'; 'configs.tiny' -> 'configs'."""
  pieces = name.split(".")
  if pieces[0] == "schn_jax" and len(pieces) > 1:
    return ".".join(pieces[:2])
  if pieces[0] in ("configs", *ENTRY_POINTS):
    return pieces[0]
  return None


def part_of_file(path):
  relative = path.relative_to(REPO).with_suffix("")
  return part_of_module(".".join(relative.parts))


def imports(path):
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{alias.name}" for alias in node.names)
  return found


def graph():
  files = [*REPO.glob("schn_jax/**/*.py"), *REPO.glob("configs/*.py")]
  files += [REPO / f"{name}.py" for name in ENTRY_POINTS]
  edges = {}
  for path in files:
    source = part_of_file(path)
    if source is None or source == "schn_jax.__init__":
      continue
    for name in imports(path):
      target = part_of_module(name)
      if target and target != source and target != "schn_jax.__init__":
        edges.setdefault(source, set()).add(target)
  # `from schn_jax import errors` names a module, not the package: keep real parts only.
  parts = {part_of_file(p) for p in files}
  return {s: {t for t in ts if t in parts} for s, ts in edges.items()}


def cycles(edges):
  found, state = [], {}

  def visit(node, path):
    state[node] = "open"
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == "open":
        found.append(path[path.index(nxt) :] + [nxt])
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = "done"

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])
  return found


def main():
  edges = graph()
  for source in sorted(edges):
    print(f"{source} -> {', '.join(sorted(edges[source])) or '-'}")
  problems = [f"cycle: {' -> '.join(c)}" for c in cycles(edges)]
  for source, targets in edges.items():
    if source.startswith("schn_jax"):
      problems += [f"{source} imports {t}" for t in targets if t in ("configs", *ENTRY_POINTS)]
      if source != "schn_jax.parity" and "schn_jax.parity" in targets:
        problems.append(f"{source} imports schn_jax.parity")
  print("\n".join(problems) if problems else "no cycles; the layering holds")
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
