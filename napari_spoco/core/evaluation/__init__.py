"""Segmentation metrics (SBD, AP, adapted Rand error, VOI)."""
