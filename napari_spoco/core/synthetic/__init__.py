"""Synthetic images with ground truth: membrane-stained tissue and nuclei, 2D and 3D.

No labeled membrane-stained tissue can be downloaded at run time, so tests, benchmarks and demos
use these generators. ``make_tissue`` models the two plant tissues of the paper's transfer
experiment (``"ovules"`` = source, ``"stem"`` = target); ``make_nuclei`` makes textured, partly
touching ellipsoid blobs. See ``docs/synthetic.md`` for the model and the preset numbers.
"""

from .nuclei import NucleiParams, make_nuclei, nuclei_params
from .tissue import TISSUE_PRESETS, TissueParams, make_tissue, tissue_params

__all__ = [
    "TISSUE_PRESETS",
    "NucleiParams",
    "TissueParams",
    "make_nuclei",
    "make_tissue",
    "nuclei_params",
    "tissue_params",
]
