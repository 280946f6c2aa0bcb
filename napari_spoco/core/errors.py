"""Errors a user can cause. Their messages say what is wrong and how to fix it."""


class SpocoInputError(ValueError):
    """Bad input: wrong shape or dimensionality, nothing labeled, NaN image, wrong dtype..."""


class CheckpointError(SpocoInputError):
    """A checkpoint file that cannot be used: foreign, truncated, or of another architecture."""
