"""From embeddings to instances: mutex watershed, HDBSCAN, mean-shift, consistency clustering.

``segment(embeddings, method)`` is the entry point; the modules hold one method each plus the
shared post-processing.
"""

from .affinities import affinities, default_edge_layout
from .mutex_watershed import mutex_watershed
from .pipeline import METHODS, segment

__all__ = ["METHODS", "affinities", "default_edge_layout", "mutex_watershed", "segment"]
