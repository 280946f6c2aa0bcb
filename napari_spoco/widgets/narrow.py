"""Widgets that fit a narrow dock: combo boxes that do not grow with their items, status lines
that wrap (long paths included), and checkboxes with a short text and the whole one as tooltip.

napari docks the plugin at about 420 px on a 1280×800 screen. Each tab sits in a scroll area
whose horizontal scrollbar is off (see ``spoco_widget._scrolled``), so any widget whose minimum
width is larger than that would be cut on the right; these helpers keep minimum widths small.
"""

from __future__ import annotations

import re

from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QLabel, QSizePolicy

#: Characters a combo box shows at least; the popup shows longer item texts whole.
COMBO_CHARS = 12

#: A zero-width space: a line-break opportunity that is not drawn.
_BREAK = "\u200b"
#: Runs of this many non-space characters get break opportunities (paths, long ids).
_LONG_WORD = 24


def fit_combo(combo: QComboBox, chars: int = COMBO_CHARS) -> QComboBox:
    """Make ``combo``'s minimum width ``chars`` characters, whatever its items (a long file or
    layer name is cut short in the box and shown whole in the popup)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, combo.sizePolicy().verticalPolicy())
    return combo


def fit_combos(widget) -> None:
    """:func:`fit_combo` for every combo box inside ``widget``."""
    for combo in widget.findChildren(QComboBox):
        fit_combo(combo)


def short_check(text: str, tip: str) -> QCheckBox:
    """A checkbox labelled ``text`` (short), whose tooltip ``tip`` says it all."""
    check = QCheckBox(text)
    check.setToolTip(tip)
    return check


def wrap_rows(form: QFormLayout) -> QFormLayout:
    """Put a field under its label when the two do not fit side by side."""
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return form


def breakable(text: str) -> str:
    """``text`` with invisible line-break opportunities inside long words (after ``/``, ``\\``,
    ``_``, ``.``, ``-``, ``,`` and at least every :data:`_LONG_WORD` characters)."""

    def split(match: re.Match) -> str:
        word = re.sub(r"([/\\_.,\-])", r"\1" + _BREAK, match.group(0))
        pieces, run = [], 0
        for char in word:
            pieces.append(char)
            run = 0 if char == _BREAK else run + 1
            if run >= _LONG_WORD:
                pieces.append(_BREAK)
                run = 0
        return "".join(pieces)

    return re.sub(r"\S{%d,}" % _LONG_WORD, split, text)


class WrappingLabel(QLabel):
    """A word-wrapped label that never widens the dock: long words (paths) break too.

    :meth:`text` returns the text as set, without the invisible break opportunities.
    """

    def __init__(self, text: str = "", parent=None):
        super().__init__(parent)
        self.setWordWrap(True)
        # The label takes the width it is given; its height follows (height-for-width).
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self._text = ""
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt name)
        self._text = str(text)
        super().setText(breakable(self._text))

    def text(self) -> str:
        return self._text
