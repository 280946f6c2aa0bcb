"""A small loss curve drawn with QPainter: no plotting library, cheap to repaint every step."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from ._logic import decimate

#: Points drawn at most; longer histories are averaged into this many bins.
MAX_POINTS = 400


class LossPlot(QWidget):
    """Total loss against iteration, on a log scale when the loss spans more than a decade."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._iterations: list[int] = []
        self._losses: list[float] = []
        self.setMinimumHeight(70)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (total) per iteration")

    @property
    def losses(self) -> list[float]:
        """The recorded total losses, oldest first."""
        return list(self._losses)

    def add(self, iteration: int, loss: float) -> None:
        """Append one point and schedule a repaint (coalesced by Qt)."""
        if not math.isfinite(loss):
            return
        self._iterations.append(int(iteration))
        self._losses.append(float(loss))
        self.update()

    def clear(self) -> None:
        """Forget the curve (a new training run starts)."""
        self._iterations.clear()
        self._losses.clear()
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = self.rect().adjusted(4, 4, -4, -14)
        painter.setPen(QPen(QColor(128, 128, 128), 1))
        painter.drawRect(rect)
        if len(self._losses) < 2:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss")
            return
        x, y = decimate(self._losses, MAX_POINTS)
        log_scale = bool(np.all(y > 0) and y.max() / y.min() > 10)
        if log_scale:
            y = np.log10(y)
        y_min, y_max = float(y.min()), float(y.max())
        span = (y_max - y_min) or 1.0
        px = rect.left() + (x / max(x[-1], 1.0)) * rect.width()
        py = rect.bottom() - (y - y_min) / span * rect.height()
        polygon = QPolygonF([QPointF(a, b) for a, b in zip(px, py)])
        painter.setPen(QPen(QColor(255, 140, 0), 1.5))
        painter.drawPolyline(polygon)
        painter.setPen(QPen(QColor(160, 160, 160), 1))
        label = f"{self._losses[-1]:.3g} at {self._iterations[-1]}"
        label += "  (log)" if log_scale else ""
        painter.drawText(
            self.rect().adjusted(4, 0, -4, 0),
            Qt.AlignmentFlag.AlignBottom | Qt.AlignmentFlag.AlignRight,
            label,
        )
