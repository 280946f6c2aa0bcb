"""The losses: SPOCO's (and its kernels and terms), the foreground head's and CRAC's."""

from .spoco import TERM_NAMES, SpocoLoss

__all__ = ["TERM_NAMES", "SpocoLoss"]
