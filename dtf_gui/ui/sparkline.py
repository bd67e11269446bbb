"""A sparkline in a table cell: the last minutes of a percentage drawn with QPainter, the current value
beside it. One delegate paints every cell of a column; no widget per cell, so a hundred workers cost a
hundred polylines a second, not four hundred plot widgets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem

# The model answers this role with a Spark (or None: nothing to draw, the text alone).
SPARK_ROLE = Qt.ItemDataRole.UserRole + 11

# Load thresholds for the colour of the line: calm, busy, saturated.
_LEVELS = ((90.0, "#c62828"), (70.0, "#b26a00"), (0.0, "#1565c0"))
_NO_DATA = "#9e9e9e"


@dataclass(frozen=True)
class Spark:
    """Points of one cell: ``x`` in [0, 1] (0 = the start of the window, 1 = now), ``y`` in percent
    (NaN where nothing was measured), and the current value (None: not measured, e.g. no GPU)."""

    x: np.ndarray
    y: np.ndarray
    current: float | None


def level_colour(value: float | None) -> QColor:
    if value is None:
        return QColor(_NO_DATA)
    return QColor(next(c for limit, c in _LEVELS if value >= limit))


def _segments(x: np.ndarray, y: np.ndarray, rect: QRectF) -> list[QPolygonF]:
    """Polylines in cell coordinates, broken where a value is missing (a gap is not a zero)."""
    left, width = rect.left(), rect.width()
    bottom, height = rect.bottom(), rect.height()
    # More points than pixels only costs time: keep the highest point of each pixel column (a spike
    # must stay visible when squeezed into a 90-pixel cell).
    if len(x) > 2 * width > 0:
        bucket = np.minimum((x * (width - 1)).astype(np.int64), int(width) - 1)
        keep = np.ones(len(x), dtype=bool)
        keep[1:] = bucket[1:] != bucket[:-1]
        starts = np.flatnonzero(keep)
        with np.errstate(invalid="ignore"):
            y = np.fmax.reduceat(y, starts)
        x = x[starts]
    px = left + x * width
    py = bottom - np.clip(y, 0.0, 100.0) / 100.0 * height
    out: list[QPolygonF] = []
    finite = np.isfinite(py)
    idx = np.flatnonzero(finite)
    if not len(idx):
        return out
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    for run in np.split(idx, breaks):
        out.append(QPolygonF([QPointF(float(px[i]), float(py[i])) for i in run]))
    return out


class SparklineDelegate(QStyledItemDelegate):
    """Paints a cell's :class:`Spark` (``SPARK_ROLE``) on the left and its display text on the right."""

    TEXT_WIDTH = "100%"

    def paint(self, painter: QPainter, option: QStyleOptionViewItem,
              index: QModelIndex | QPersistentModelIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        text = opt.text
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        # Background, selection and focus as the style draws them; the line and text on top.
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)

        spark = index.data(SPARK_ROLE)
        rect = QRectF(opt.rect).adjusted(3, 3, -3, -3)
        text_w = opt.fontMetrics.horizontalAdvance(self.TEXT_WIDTH) + 4
        plot = rect.adjusted(0, 0, -text_w, 0)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if isinstance(spark, Spark) and plot.width() > 8:
            # On a selected row the highlight is the background: draw in its text colour to stay visible.
            colour = opt.palette.highlightedText().color() if selected else level_colour(spark.current)
            # A faint frame says "0 to 100 %", so a flat line at the bottom reads as idle, not broken.
            frame = QColor(colour)
            frame.setAlpha(40)
            painter.setPen(QPen(frame, 1))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(plot)
            fill = QColor(colour)
            fill.setAlpha(60)
            for poly in _segments(spark.x, spark.y, plot):
                if poly.size() > 1:
                    area = QPainterPath()
                    area.moveTo(poly.first().x(), plot.bottom())
                    for i in range(poly.size()):
                        area.lineTo(poly.at(i))
                    area.lineTo(poly.last().x(), plot.bottom())
                    area.closeSubpath()
                    painter.fillPath(area, QBrush(fill))
                    painter.setPen(QPen(colour, 1.4))
                    painter.drawPolyline(poly)
                else:
                    painter.setPen(QPen(colour, 3))
                    painter.drawPoint(poly.first())
        if text:
            pen_colour = opt.palette.highlightedText().color() if selected else (
                level_colour(spark.current) if isinstance(spark, Spark) and spark.current is not None
                else opt.palette.text().color())
            painter.setPen(pen_colour)
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), text)
        painter.restore()
