"""The SPOCO method as plain functions and classes over arrays.

Nothing below this package may import Qt, napari or magicgui: the core runs headless
(command line, scripts, clusters) and is what the widgets call in worker threads.
"""
