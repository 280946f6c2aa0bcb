"""napari-spoco: instance segmentation from sparse annotations with SPOCO pixel embeddings."""

__version__ = "0.1.0"
