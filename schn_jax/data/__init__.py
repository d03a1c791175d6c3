"""Data layer: sources, retrieval protocols and the input pipeline.

Knows nothing of models, training or evaluation; see docs/data.md.
"""

from schn_jax.data.config import default_data_config
from schn_jax.data.dataset import RetrievalData, build_dataset, remote_files
from schn_jax.data.pipeline import normalize

__all__ = ["RetrievalData", "build_dataset", "default_data_config", "normalize", "remote_files"]
