"""The embedding network and how it is saved and exchanged.

U-Net, frozen group norm, momentum copy, input normalisation, checkpoints, bioimage.io packages.
"""
