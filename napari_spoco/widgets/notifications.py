"""Turning failures into napari notifications that tell the user what to do.

Widgets never let an exception escape into the event loop: a worker's ``errored`` signal and
every button handler end in :func:`notify_error`, and the viewer keeps working.
"""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error, show_info, show_warning

from napari_spoco.core.errors import SpocoInputError

from ._logic import is_out_of_memory

logger = logging.getLogger(__name__)

OUT_OF_MEMORY_ADVICE = (
    "Out of memory while {what}. Use a smaller patch or batch size (Train > Advanced), a smaller "
    "tile size, or the CPU, which has more memory than most GPUs."
)


def message_for(error: BaseException, what: str) -> str:
    """The text shown for ``error`` raised while doing ``what`` (e.g. "training")."""
    error = getattr(error, "original", error)
    if isinstance(error, SpocoInputError):
        return str(error)
    if is_out_of_memory(error):
        return OUT_OF_MEMORY_ADVICE.format(what=what)
    return (
        f"Unexpected error while {what}: {type(error).__name__}: {error}. "
        "The viewer still works; see the terminal for the traceback and report it if it repeats."
    )


def notify_error(error: BaseException, what: str) -> str:
    """Show ``error`` as a napari error notification and return the message shown.

    User errors are shown without traceback; anything else is logged with its traceback, since
    only a developer can act on it.
    """
    message = message_for(error, what)
    error = getattr(error, "original", error)
    if not isinstance(error, SpocoInputError) and not is_out_of_memory(error):
        logger.error("napari-spoco: error while %s", what, exc_info=error)
    show_error(message)
    return message


def report_error(status, error: BaseException, what: str) -> str:
    """:func:`notify_error`, and the same message in the dock's ``status`` label.

    A toast is truncated and goes away; the status line keeps the whole message until the next
    action replaces it.
    """
    message = notify_error(error, what)
    status.setText(status_error_text(message))
    return message


def status_error_text(message: str) -> str:
    """The status line's text for an error message."""
    return f"Error: {message}"


def notify_warning(message: str) -> None:
    """A problem the user can fix right away (e.g. pressing Train twice)."""
    show_warning(message)


def notify_info(message: str) -> None:
    """Progress worth telling (a checkpoint was saved, a model was loaded)."""
    show_info(message)
