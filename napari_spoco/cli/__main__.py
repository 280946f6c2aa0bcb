"""``python -m napari_spoco.cli``: the ``napari-spoco`` command without its console script."""

import sys

from napari_spoco.cli import main

sys.exit(main())
