"""From a trained network to instances.

Tiled and blockwise prediction, PCA colours, the segmentation settings, CRAC affinities and
the uncertainty behind "Suggest next".
"""
