"""A run's report as a PDF, drawn with Qt alone (QPdfWriter + QPainter): no PDF library to install.

Page 1 is the run at a glance: name, id, times, status, counts and pass rate, workers, and the runs
of its name before it. Then the pass/fail table (failures first, with their error line), a trend
plot per metric (the history before the run, the run's span shaded, change points drawn as steps
between their levels, the run's anomalies ringed), the findings and the workers. Each plot is drawn
into a QImage and placed in the PDF as an image. Every page has a footer: the run, when the report
was made, DTF's version, and "page n of N" (the document is laid out twice: once to count pages).

Input is the dict of ``reports.run_report`` (the ``run_report`` operation). Needs a
QGuiApplication; the offscreen platform does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QIODevice, QMarginsF, QPointF, QRectF, Qt
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPageLayout,
    QPageSize,
    QPainter,
    QPainterPath,
    QPdfWriter,
    QPen,
)

from dtf_agent import __version__

DPI = 300            # of the PDF's coordinates
PLOT_DPI = 200       # of the plot images (sharp when printed, a few hundred kB each)
FONT = "DejaVu Sans"
INK = QColor("#1f2328")
MUTED = QColor("#656d76")
RULE = QColor("#d0d7de")
ZEBRA = QColor("#f6f8fa")
ACCENT = QColor("#0969da")
RUN_COLOR = QColor("#e36209")
OUTCOME_COLORS = {
    "passed": "#1a7f37", "success": "#1a7f37", "flaky": "#bf8700", "xpassed": "#bf8700",
    "failed": "#cf222e", "failure": "#cf222e", "error": "#a40e26", "crashed": "#82071e",
    "skipped": "#6e7781", "xfailed": "#6e7781", "partial": "#6e7781",
}
KIND_NAMES = {"change_point": "change point", "anomaly": "anomaly", "trend": "trend (drift)"}


def _color(outcome: str | None) -> QColor:
    return QColor(OUTCOME_COLORS.get(str(outcome), "#57606a"))


def _font(pt: float, bold: bool = False, family: str = FONT) -> QFont:
    f = QFont(family)
    f.setPointSizeF(pt)
    f.setBold(bold)
    if hasattr(f, "setFeature"):  # Qt 6.7+: no "fi" ligature, so a test id found in the PDF reads as typed
        f.setFeature(QFont.Tag("liga"), 0)
    return f


def _when(t: Any, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if t is None:
        return "-"
    try:
        return time.strftime(fmt, time.localtime(float(t)))
    except (OverflowError, OSError, ValueError):
        return str(t)


def _took(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _num(v: Any) -> str:
    if v is None:
        return "-"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f"{x:.4g}"


def _tz() -> str:
    return time.strftime("%Z") or "local time"


# -----------------------------------------------------------------------------------------------
# plots (QImage)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values (1, 2, 5 times a power of ten) spanning lo..hi, about n of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


_TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               172800, 604800, 1209600, 2592000, 7776000, 31536000]


def time_ticks(lo: float, hi: float, n: int = 6) -> tuple[list[float], str]:
    """Tick times (aligned to the step in local time) and the strftime format of their labels."""
    span = max(hi - lo, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= n), _TIME_STEPS[-1])
    offset = -time.localtime(lo).tm_gmtoff
    first = math.ceil((lo - offset) / step) * step + offset
    ticks = []
    t = float(first)
    while t <= hi:
        ticks.append(t)
        t += step
    if step >= 86400:
        fmt = "%Y-%m-%d"
    elif span >= 86400:
        fmt = "%m-%d %H:%M"
    elif step < 60:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    return ticks, fmt


class _Canvas:
    """A QImage for a plot, its painter set up so point sizes mean what they do on paper."""

    def __init__(self, width_mm: float, height_mm: float) -> None:
        px = PLOT_DPI / 25.4
        self.image = QImage(round(width_mm * px), round(height_mm * px), QImage.Format.Format_RGB32)
        dpm = round(PLOT_DPI / 0.0254)
        self.image.setDotsPerMeterX(dpm)
        self.image.setDotsPerMeterY(dpm)
        self.image.fill(QColor("white"))
        self.p = QPainter(self.image)
        self.p.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.p.setRenderHint(QPainter.RenderHint.TextAntialiasing)
        self.mm = px
        self.w = float(self.image.width())
        self.h = float(self.image.height())

    def text(self, rect: QRectF, s: str, pt: float, flags: Qt.AlignmentFlag, color: QColor = INK,
             bold: bool = False) -> None:
        self.p.setFont(_font(pt, bold))
        self.p.setPen(color)
        self.p.drawText(rect, int(flags), s)

    def width_of(self, s: str, pt: float) -> float:
        return QFontMetricsF(_font(pt), self.image).horizontalAdvance(s)

    def done(self) -> QImage:
        self.p.end()
        return self.image


def _frame(c: _Canvas, title: str, subtitle: str, ylabel: str, x0: float, x1: float, y0: float, y1: float,
           time_axis: bool = True) -> tuple[QRectF, Callable[[float], float], Callable[[float], float]]:
    """Title, axes, grid, ticks and labels; returns the plot area and the x and y mappings."""
    mm = c.mm
    yticks = nice_ticks(y0, y1)
    ylabels = [_num(v) for v in yticks]
    left = max(c.width_of(s, 7) for s in ylabels) + 9 * mm
    top = 11 * mm if title else 6 * mm  # untitled: the PDF holds the title as text, above the image
    area = QRectF(left, top, c.w - left - 4 * mm, c.h - top - 10 * mm)
    if title:
        c.text(QRectF(2 * mm, 0.8 * mm, c.w - 4 * mm, 5 * mm), title, 9, Qt.AlignmentFlag.AlignLeft, bold=True)
        c.text(QRectF(2 * mm, 5.4 * mm, c.w - 4 * mm, 4.5 * mm), subtitle, 7, Qt.AlignmentFlag.AlignLeft, MUTED)

    def fx(x: float) -> float:
        return area.left() + (x - x0) / (x1 - x0) * area.width()

    def fy(y: float) -> float:
        return area.bottom() - (y - y0) / (y1 - y0) * area.height()

    c.p.setPen(QPen(RULE, 0.25 * mm))
    for v, s in zip(yticks, ylabels, strict=True):
        c.p.drawLine(QPointF(area.left(), fy(v)), QPointF(area.right(), fy(v)))
        c.text(QRectF(0, fy(v) - 2 * mm, left - 1.5 * mm, 4 * mm), s, 7,
               Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, MUTED)
    if time_axis:
        xticks, fmt = time_ticks(x0, x1)
        for t in xticks:
            c.p.setPen(QPen(RULE, 0.25 * mm))
            c.p.drawLine(QPointF(fx(t), area.top()), QPointF(fx(t), area.bottom()))
            c.text(QRectF(fx(t) - 15 * mm, area.bottom() + 1 * mm, 30 * mm, 4 * mm), _when(t, fmt), 7,
                   Qt.AlignmentFlag.AlignHCenter, MUTED)
        c.text(QRectF(area.left(), area.bottom() + 5 * mm, area.width(), 4 * mm), f"time ({_tz()})", 7,
               Qt.AlignmentFlag.AlignHCenter, MUTED)
    c.p.setPen(QPen(MUTED, 0.3 * mm))
    c.p.drawLine(area.bottomLeft(), area.bottomRight())
    c.p.drawLine(area.bottomLeft(), area.topLeft())
    # The y axis label, upright along the axis.
    c.p.save()
    c.p.translate(1.5 * mm, area.center().y())
    c.p.rotate(-90)
    c.text(QRectF(-area.height() / 2, -0.5 * mm, area.height(), 4 * mm), ylabel, 7,
           Qt.AlignmentFlag.AlignHCenter, MUTED)
    c.p.restore()
    return area, fx, fy


def _direction_words(direction: str) -> str:
    return {"higher": "higher is better", "lower": "lower is better"}.get(direction, "direction not declared")


def series_title(s: dict[str, Any]) -> tuple[str, str]:
    """A trend plot's title and the line under it."""
    unit = s.get("unit") or ""
    n = len(s.get("points") or [])
    cps = len(s.get("change_points") or [])
    return (f"{s['metric']}" + (f" [{unit}]" if unit else "") + f"  —  {s['test_id'] or '(no test id)'}",
            f"{_direction_words(s.get('direction') or '')};  {n} points, {s.get('run_points', 0)} in this run;  "
            f"{cps} change point{'s' if cps != 1 else ''}")


def plot_series(s: dict[str, Any], anomalies: Sequence[dict[str, Any]], width_mm: float = 180,
                height_mm: float = 52, titled: bool = True) -> QImage:
    """One test x metric over time: its points (the run's in the run color, over the run's shaded
    span), change points as steps from the level before to the level after, the run's anomalies
    ringed. ``titled``: the title drawn in the image (the PDF writes it as text instead)."""
    c = _Canvas(width_mm, height_mm)
    mm = c.mm
    pts = [(float(t), float(v)) for t, v in s.get("points") or []]
    cps = sorted((cp for cp in s.get("change_points") or [] if cp.get("timestamp") is not None),
                 key=lambda cp: float(cp["timestamp"]))
    unit = s.get("unit") or ""
    title, sub = series_title(s) if titled else ("", "")
    if not pts:
        c.text(QRectF(0, 0, c.w, c.h), "(no values)", 8, Qt.AlignmentFlag.AlignCenter, MUTED)
        return c.done()
    xs = [t for t, _ in pts]
    levels = [v for _, v in pts] + [float(cp[k]) for cp in cps for k in ("mean_before", "mean_after")
                                     if cp.get(k) is not None]
    x0, x1 = min(xs), max(xs)
    span = s.get("run_span")
    if x1 - x0 < 1e-6:
        x0, x1 = x0 - 30, x1 + 30
    pad = (x1 - x0) * 0.03
    x0, x1 = x0 - pad, x1 + pad
    y0, y1 = min(levels), max(levels)
    if y1 - y0 < 1e-12 * max(1.0, abs(y1)):
        y0, y1 = y0 - max(1.0, abs(y0) * 0.1), y1 + max(1.0, abs(y1) * 0.1)
    ypad = (y1 - y0) * 0.08
    ticks = nice_ticks(y0 - ypad, y1 + ypad)
    y0, y1 = min(ticks[0], y0 - ypad), max(ticks[-1], y1 + ypad)
    area, fx, fy = _frame(c, title, sub, f"{s['metric']}" + (f" ({unit})" if unit else ""), x0, x1, y0, y1)
    p = c.p
    p.setClipRect(area)
    if span:
        a, b = fx(float(span[0])), fx(float(span[1]))
        band = QRectF(min(a, b) - 1.2 * mm, area.top(), abs(b - a) + 2.4 * mm, area.height())
        p.fillRect(band, QColor(227, 98, 9, 28))
        p.setPen(QPen(RUN_COLOR, 0.2 * mm, Qt.PenStyle.DashLine))
        p.drawLine(QPointF(band.left(), area.top()), QPointF(band.left(), area.bottom()))
    # The series, thin, then its points.
    p.setPen(QPen(QColor(9, 105, 218, 90), 0.25 * mm))
    path = QPainterPath(QPointF(fx(pts[0][0]), fy(pts[0][1])))
    for t, v in pts[1:]:
        path.lineTo(fx(t), fy(v))
    p.drawPath(path)
    r = 0.55 * mm
    for t, v in pts:
        inside = span is not None and float(span[0]) <= t <= float(span[1])
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QBrush(RUN_COLOR if inside else ACCENT))
        p.drawEllipse(QPointF(fx(t), fy(v)), r * (1.3 if inside else 1.0), r * (1.3 if inside else 1.0))
    # Change points: the level before, a step at the change, the level after.
    if cps:
        p.setPen(QPen(QColor("#8250df"), 0.5 * mm))
        start = pts[0][0]
        for i, cp in enumerate(cps):
            t = float(cp["timestamp"])
            before, after = cp.get("mean_before"), cp.get("mean_after")
            end = float(cps[i + 1]["timestamp"]) if i + 1 < len(cps) else pts[-1][0]
            if before is not None:
                p.drawLine(QPointF(fx(start), fy(float(before))), QPointF(fx(t), fy(float(before))))
            if before is not None and after is not None:
                p.drawLine(QPointF(fx(t), fy(float(before))), QPointF(fx(t), fy(float(after))))
            if after is not None:
                p.drawLine(QPointF(fx(t), fy(float(after))), QPointF(fx(end), fy(float(after))))
            start = t
    p.setClipping(False)
    for cp in cps:
        t = float(cp["timestamp"])
        rel = cp.get("rel_change")
        label = (f"{float(rel) * 100:+.1f}%" if rel is not None else "change") + (
            f" p={float(cp['p_value']):.1g}" if cp.get("p_value") is not None else "")
        x = min(max(fx(t) + 1 * mm, area.left()), area.right() - 32 * mm)
        c.text(QRectF(x, area.top() + 0.5 * mm, 32 * mm, 4 * mm), label, 6.5, Qt.AlignmentFlag.AlignLeft,
               QColor("#8250df"), bold=True)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.setPen(QPen(QColor("#cf222e"), 0.4 * mm))
    for found in anomalies:
        if found.get("time") is not None and found.get("value") is not None:
            p.drawEllipse(QPointF(fx(float(found["time"])), fy(float(found["value"]))), 1.8 * mm, 1.8 * mm)
    # The legend, top right, inside the plot.
    entries = [(ACCENT, "before this run"), (RUN_COLOR, "this run")]
    if cps:
        entries.append((QColor("#8250df"), "level (change points)"))
    if anomalies:
        entries.append((QColor("#cf222e"), "anomaly"))
    x = area.right() - 2 * mm
    for color, label in reversed(entries):
        w = c.width_of(label, 6.5) + 4 * mm
        x -= w
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QBrush(color))
        p.drawEllipse(QPointF(x + 1 * mm, area.top() - 2.7 * mm), 0.8 * mm, 0.8 * mm)
        c.text(QRectF(x + 2.3 * mm, area.top() - 4.8 * mm, w, 4 * mm), label, 6.5, Qt.AlignmentFlag.AlignLeft, MUTED)
    return c.done()


def plot_history(history: Sequence[dict[str, Any]], current: str, width_mm: float = 180,
                 height_mm: float = 52) -> QImage:
    """The pass rate of each run of this name, oldest first, this run's bar outlined."""
    c = _Canvas(width_mm, height_mm)
    mm = c.mm
    n = len(history)
    area, _, fy = _frame(c, "Runs of this name", f"pass rate of the last {n} runs, oldest first; this run outlined",
                         "pass rate (%)", 0, n, 0, 100, time_axis=False)
    slot = area.width() / max(n, 1)
    for i, h in enumerate(history):
        rate = h.get("pass_rate")
        x = area.left() + i * slot + slot * 0.15
        w = slot * 0.7
        if rate is not None:
            top = fy(100 * float(rate))
            color = QColor("#1a7f37") if rate >= 0.999 else QColor("#bf8700") if rate >= 0.9 else QColor("#cf222e")
            c.p.fillRect(QRectF(x, top, w, area.bottom() - top), color)
            # Inside the bar's top (a full bar leaves no room above it), or above a short one.
            inside = area.bottom() - top > 6 * mm
            c.text(QRectF(x - 3 * mm, top + (0.8 * mm if inside else -4.2 * mm), w + 6 * mm, 4 * mm),
                   f"{100 * float(rate):.1f}%".replace(".0%", "%"), 6.5, Qt.AlignmentFlag.AlignHCenter,
                   QColor("white") if inside else MUTED, bold=inside)
        if h.get("run_id") == current:
            c.p.setPen(QPen(INK, 0.5 * mm))
            c.p.setBrush(Qt.BrushStyle.NoBrush)
            c.p.drawRect(QRectF(x - 0.6 * mm, area.top(), w + 1.2 * mm, area.height()))
        label = "." + str(h.get("run_id", "")).rpartition(".")[2]
        c.text(QRectF(x - 3 * mm, area.bottom() + 1 * mm, w + 6 * mm, 4 * mm), label, 6.5,
               Qt.AlignmentFlag.AlignHCenter, INK if h.get("run_id") == current else MUTED)
        c.text(QRectF(x - 3 * mm, area.bottom() + 4.5 * mm, w + 6 * mm, 4 * mm), _when(h.get("created"), "%m-%d"),
               6, Qt.AlignmentFlag.AlignHCenter, MUTED)
    return c.done()


# -----------------------------------------------------------------------------------------------
# the document


class _Doc:
    """The pages being drawn: a cursor down the page, new pages as needed, a footer on each."""

    def __init__(self, device: QPdfWriter, footer: str, total: int | None) -> None:
        self.device = device
        self.p = QPainter(device)
        self.p.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.mm = device.resolution() / 25.4
        self.w = float(device.width())
        self.bottom = float(device.height()) - 8 * self.mm  # the footer's room
        self.footer = footer
        self.total = total
        self.page = 1
        self.y = 0.0

    def metrics(self, pt: float, bold: bool = False) -> QFontMetricsF:
        return QFontMetricsF(_font(pt, bold), self.device)

    def text(self, x: float, w: float, s: str, pt: float = 9, *, bold: bool = False, color: QColor = INK,
             align: Qt.AlignmentFlag = Qt.AlignmentFlag.AlignLeft, elide: Qt.TextElideMode | None = None,
             y: float | None = None, h: float | None = None) -> float:
        """One line at the cursor (or at ``y``); returns its height."""
        fm = self.metrics(pt, bold)
        height = h if h is not None else fm.height() * 1.25
        if elide is not None:
            s = fm.elidedText(s, elide, w)
        self.p.setFont(_font(pt, bold))
        self.p.setPen(color)
        self.p.drawText(QRectF(x, self.y if y is None else y, w, height),
                        int(align | Qt.AlignmentFlag.AlignVCenter), s)
        return height

    def ensure(self, h: float) -> bool:
        """Room for ``h`` more on this page, starting a new one if not; True when it did."""
        if self.y + h <= self.bottom:
            return False
        self.new_page()
        return True

    def new_page(self) -> None:
        self._footer()
        self.device.newPage()
        self.page += 1
        self.y = 0.0

    def _footer(self) -> None:
        mm = self.mm
        y = self.bottom + 3 * mm
        self.p.setPen(QPen(RULE, 0.2 * mm))
        self.p.drawLine(QPointF(0, y - 1 * mm), QPointF(self.w, y - 1 * mm))
        self.text(0, self.w * 0.8, self.footer, 7, color=MUTED, y=y, h=4 * mm)
        pages = f"page {self.page} of {self.total}" if self.total else f"page {self.page}"
        self.text(self.w * 0.7, self.w * 0.3, pages, 7, color=MUTED, y=y, h=4 * mm,
                  align=Qt.AlignmentFlag.AlignRight)

    def heading(self, s: str, note: str = "", keep: float = 0.0) -> None:
        """A section's title; ``keep`` (device units) is how much of what follows must fit under it,
        so that a heading never ends a page alone."""
        mm = self.mm
        self.ensure(14 * mm + max(keep, 12 * mm))
        self.y += 3 * mm
        self.y += self.text(0, self.w, s, 13, bold=True)
        if note:
            self.y += self.text(0, self.w, note, 8, color=MUTED)
        self.y += 1.5 * mm

    def image(self, img: QImage, width_mm: float) -> None:
        h = img.height() * (width_mm * self.mm) / img.width()
        self.ensure(h + 2 * self.mm)
        self.p.drawImage(QRectF(0, self.y, width_mm * self.mm, h), img)
        self.y += h + 3 * self.mm

    def table(self, columns: Sequence[tuple[str, float, Qt.AlignmentFlag]], rows: Sequence[Sequence[str]], *,
              colors: Sequence[QColor | None] = (), notes: Sequence[str] = (), more: int = 0,
              what: str = "rows") -> None:
        """Rows under a header (repeated on each page), zebra-striped; ``colors`` tint each row's
        first cell, ``notes`` add a grey second line (an error message) under a row."""
        mm = self.mm
        widths = [f * self.w for _, f, _ in columns]
        line = self.metrics(8).height() * 1.35
        note_line = self.metrics(7).height() * 1.3
        pad = 1.2 * mm

        def header() -> None:
            self.p.fillRect(QRectF(0, self.y, self.w, line), QColor("#eaeef2"))
            x = 0.0
            for (title, _, align), w in zip(columns, widths, strict=True):
                self.text(x + pad, w - 2 * pad, title, 8, bold=True, align=align, h=line)
                x += w
            self.y += line

        self.ensure(line * 3)
        header()
        for i, row in enumerate(rows):
            note = notes[i] if i < len(notes) else ""
            h = line + (note_line if note else 0)
            if self.ensure(h):
                header()
            if i % 2:
                self.p.fillRect(QRectF(0, self.y, self.w, h), ZEBRA)
            x = 0.0
            for j, ((_, _, align), w, cell) in enumerate(zip(columns, widths, row, strict=True)):
                color = colors[i] if j == 0 and i < len(colors) and colors[i] is not None else INK
                self.text(x + pad, w - 2 * pad, cell, 8, bold=j == 0 and color is not INK, color=color or INK,
                          align=align, elide=Qt.TextElideMode.ElideMiddle, h=line)
                x += w
            if note:
                self.text(widths[0] + pad, self.w - widths[0] - 2 * pad, note, 7, color=MUTED,
                          elide=Qt.TextElideMode.ElideRight, y=self.y + line - 0.5 * mm, h=note_line)
            self.y += h
        self.p.setPen(QPen(RULE, 0.2 * mm))
        self.p.drawLine(QPointF(0, self.y), QPointF(self.w, self.y))
        self.y += 1.5 * mm
        if more:
            self.y += self.text(0, self.w, f"… and {more} more {what} (export CSV for all of them)", 8, color=MUTED)
        self.y += 2 * mm

    def finish(self) -> None:
        self._footer()
        self.p.end()


def _summary(d: _Doc, r: dict[str, Any], plots: dict[str, QImage]) -> None:
    mm = d.mm
    run = r["run"]
    d.y += d.text(0, d.w, "Run report", 10, color=MUTED)
    d.y += d.text(0, d.w, str(run.get("name") or run["run_id"]), 20, bold=True, elide=Qt.TextElideMode.ElideRight)
    status = str(run.get("status") or "")
    d.text(0, d.w, f"{run['run_id']}  ·  {run.get('kind') or ''} run  ·  ", 10, color=MUTED)
    lead = d.metrics(10).horizontalAdvance(f"{run['run_id']}  ·  {run.get('kind') or ''} run  ·  ")
    d.y += d.text(lead, d.w - lead, status, 10, bold=True,
                  color=_color("passed" if status == "passed" else "failed" if status in ("failed", "error")
                               else "skipped"))
    d.y += 4 * mm
    # The counts as tiles: what a reader looks for first.
    counts: dict[str, int] = r.get("counts") or {}
    order = ["passed", "success", "failed", "failure", "error", "crashed", "flaky", "skipped", "xfailed", "xpassed"]
    keys = [k for k in order if counts.get(k)] + [k for k in counts if k not in order and counts[k]]
    tile_w, tile_h, x = 28 * mm, 17 * mm, 0.0
    for k in keys:
        if x + tile_w > d.w:
            break
        color = _color(k)
        d.p.fillRect(QRectF(x, d.y, tile_w, tile_h), QColor(color.red(), color.green(), color.blue(), 28))
        d.p.fillRect(QRectF(x, d.y, 1.2 * mm, tile_h), color)
        d.text(x + 3 * mm, tile_w - 4 * mm, str(counts[k]), 18, bold=True, color=color, y=d.y + 1 * mm, h=9 * mm)
        d.text(x + 3 * mm, tile_w - 4 * mm, k, 8, color=MUTED, y=d.y + 10 * mm, h=5 * mm)
        x += tile_w + 3 * mm
    if keys:
        d.y += tile_h + 4 * mm
    rate = r.get("pass_rate")
    workers = r.get("workers") or []
    span = r.get("span") or [None, None]
    run_took = (run["finished"] - run["created"]) if run.get("finished") and run.get("created") else None
    n_workers = len(workers) + int(r.get("workers_more") or 0)
    facts = [
        ("Tests" if r.get("per_test") else "Task results", f"{r.get('counts_line', '')}  ({r.get('tests_total', 0)} in all)"),
        ("Pass rate", "-" if rate is None else f"{100 * rate:.1f} %"),
        ("Created", _when(run.get("created"))),
        ("Finished", _when(run.get("finished")) if run.get("finished") else "not finished"),
        ("Took", _took(run_took)),
        ("Results from", f"{_when(span[0])}  to  {_when(span[1])}"),
        ("Workers", f"{n_workers}: " + ", ".join(w["worker_id"] for w in workers[:8])
         + (" …" if n_workers > 8 else "") if n_workers else "none"),
        ("Findings", _findings_line(r)),
        ("Metrics plotted", f"{len(r.get('series') or [])}" + (f" of {len(r['series']) + r['series_more']}"
                                                               if r.get("series_more") else "")),
    ]
    key_w = 32 * mm
    for k, v in facts:
        d.text(0, key_w, k, 9, color=MUTED)
        d.y += d.text(key_w, d.w - key_w, v, 9, elide=Qt.TextElideMode.ElideRight)
    if rate is not None:
        d.y += 2 * mm
        bar = QRectF(0, d.y, d.w, 3 * mm)
        d.p.fillRect(bar, QColor("#cf222e"))
        d.p.fillRect(QRectF(0, d.y, d.w * rate, 3 * mm), QColor("#1a7f37"))
        d.y += 6 * mm
    if "history" in plots:
        d.y += 2 * mm
        d.image(plots["history"], 180)
    _workers(d, r)


def _findings_line(r: dict[str, Any]) -> str:
    rows = r.get("findings") or []
    cps = sum(1 for f in rows if f.get("kind") == "change_point")
    trends = sum(1 for f in rows if f.get("kind") == "trend")
    anomalies = len(rows) - cps - trends
    line = f"{anomalies} anomal{'y' if anomalies == 1 else 'ies'}, {cps} change point{'' if cps == 1 else 's'}"
    if trends:
        line += f", {trends} trend{'' if trends == 1 else 's'}"
    more = int(r.get("findings_more") or 0)
    return line + (f" (and {more} more)" if more else "")


def _tests(d: _Doc, r: dict[str, Any]) -> None:
    rows = r.get("tests") or []
    per_test = r.get("per_test")
    d.heading("Tests, failures first" if per_test else "Task results, failures first",
              f"{r.get('counts_line', '')}; each test once, with its last outcome" if per_test
              else r.get("counts_line", ""))
    if not rows:
        d.y += d.text(0, d.w, "No test rows in this run.", 9, color=MUTED)
        return
    cols = [("Outcome", 0.1, Qt.AlignmentFlag.AlignLeft), ("Test" if per_test else "Test / task", 0.55,
                                                           Qt.AlignmentFlag.AlignLeft),
            ("Duration", 0.1, Qt.AlignmentFlag.AlignRight), ("Runs", 0.06, Qt.AlignmentFlag.AlignRight),
            ("Worker", 0.19, Qt.AlignmentFlag.AlignLeft)]
    cells = [[str(t["outcome"]), t["test_id"] or str(t.get("task_id") or ""),
              "-" if t.get("duration") is None else f"{float(t['duration']):.2f} s", str(t.get("runs") or 1),
              str(t.get("worker_id") or "-")] for t in rows]
    d.table(cols, cells, colors=[_color(t["outcome"]) for t in rows], notes=[t.get("error") or "" for t in rows],
            more=int(r.get("tests_more") or 0), what="tests" if per_test else "tasks")


def _plots(d: _Doc, r: dict[str, Any], plots: dict[str, QImage]) -> None:
    series = r.get("series") or []
    more = int(r.get("series_more") or 0)
    first = plots.get("series0")
    d.heading("Metric trends", "each metric of this run's tests over time, the history before the run included"
              + (f"; {more} more series not plotted" if more else ""),
              keep=first.height() * 180 * d.mm / first.width() + 10 * d.mm if first is not None else 0.0)
    if not series:
        d.y += d.text(0, d.w, "This run's results carry no metrics.", 9, color=MUTED)
        return
    for i, s in enumerate(series):
        img = plots[f"series{i}"]
        title, sub = series_title(s)
        fm_h = d.metrics(9.5, True).height() * 1.25 + d.metrics(7.5).height() * 1.25
        d.ensure(fm_h + img.height() * 180 * d.mm / img.width())  # title and plot on one page
        d.y += d.text(0, d.w, title, 9.5, bold=True, elide=Qt.TextElideMode.ElideMiddle)
        d.y += d.text(0, d.w, sub, 7.5, color=MUTED)
        d.image(img, 180)


def _findings(d: _Doc, r: dict[str, Any]) -> None:
    rows = r.get("findings") or []
    d.heading("Findings", "anomalies, change points and trends found in this run's results")
    if not rows:
        d.y += d.text(0, d.w, "None: no anomaly, change point or trend in this run's results.", 9, color=MUTED)
        return
    cols = [("Kind", 0.13, Qt.AlignmentFlag.AlignLeft), ("Time", 0.15, Qt.AlignmentFlag.AlignLeft),
            ("Metric", 0.16, Qt.AlignmentFlag.AlignLeft), ("Test", 0.38, Qt.AlignmentFlag.AlignLeft),
            ("Worker", 0.18, Qt.AlignmentFlag.AlignLeft)]
    cells = [[KIND_NAMES.get(str(f.get("kind")), str(f.get("kind"))), _when(f.get("time"), "%m-%d %H:%M:%S"),
              str(f.get("metric") or ""), str(f.get("test_id") or "-"), str(f.get("worker_id") or "-")]
             for f in rows]
    colors = [QColor("#cf222e") if f.get("direction") == "regression" else QColor("#1a7f37")
              if f.get("direction") == "improvement" else None for f in rows]
    notes = [f"{f.get('direction') or 'finding'}: {f.get('detail') or ''}" for f in rows]
    d.table(cols, cells, colors=colors, notes=notes, more=int(r.get("findings_more") or 0), what="findings")


def _workers(d: _Doc, r: dict[str, Any]) -> None:
    rows = r.get("workers") or []
    d.heading("Workers", "the workers that ran this run's tasks", keep=20 * d.mm)
    if not rows:
        d.y += d.text(0, d.w, "No worker has reported a result of this run.", 9, color=MUTED)
        return
    cols = [("Worker", 0.17, Qt.AlignmentFlag.AlignLeft), ("Host", 0.16, Qt.AlignmentFlag.AlignLeft),
            ("Hardware", 0.3, Qt.AlignmentFlag.AlignLeft), ("Tasks", 0.07, Qt.AlignmentFlag.AlignRight),
            ("Tests", 0.07, Qt.AlignmentFlag.AlignRight), ("Failures", 0.09, Qt.AlignmentFlag.AlignRight),
            ("Busy", 0.14, Qt.AlignmentFlag.AlignRight)]
    cells = [[w["worker_id"], w.get("host") or "-", w.get("hardware") or "-", str(w.get("tasks", 0)),
              str(w.get("tests", 0)), str(w.get("failures", 0)), _took(w.get("busy_s"))] for w in rows]
    d.table(cols, cells, more=int(r.get("workers_more") or 0), what="workers")


def _draw(device: QPdfWriter, r: dict[str, Any], total: int | None, plots: dict[str, QImage]) -> int:
    run = r["run"]
    footer = (f"DTF {__version__}  ·  run {run['run_id']}  ·  generated "
              f"{_when(r.get('generated_at') or time.time(), '%Y-%m-%d %H:%M:%S')} {_tz()}")
    d = _Doc(device, footer, total)
    _summary(d, r, plots)  # with the workers: page 1 is the run at a glance
    _tests(d, r)
    _plots(d, r, plots)
    _findings(d, r)
    d.finish()
    return d.page


def _writer(target: str | QIODevice, title: str) -> QPdfWriter:
    w = QPdfWriter(target)
    w.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    w.setPageMargins(QMarginsF(15, 14, 15, 12), QPageLayout.Unit.Millimeter)
    w.setResolution(DPI)
    w.setTitle(title)
    w.setCreator(f"DTF {__version__}")
    return w


def render_run_pdf(report: dict[str, Any], path: str | Path) -> int:
    """Write the report of ``report`` (reports.run_report's dict) to ``path``; returns the page count."""
    anomalies: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in report.get("findings") or []:
        if f.get("kind") == "anomaly":
            anomalies.setdefault((str(f.get("test_id") or ""), str(f.get("metric"))), []).append(f)
    plots: dict[str, QImage] = {}
    for i, s in enumerate(report.get("series") or []):
        plots[f"series{i}"] = plot_series(s, anomalies.get((s["test_id"], s["metric"]), []), titled=False)
    history = report.get("history") or []
    if len(history) >= 2:
        plots["history"] = plot_history(history, report["run"]["run_id"])
    title = f"Run report: {report['run'].get('name') or report['run']['run_id']}"
    # The first pass only counts the pages, for "page n of N".
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    total = _draw(_writer(buf, title), report, None, plots)
    buf.close()
    pages = _draw(_writer(str(path), title), report, total, plots)
    if not Path(path).exists():
        raise OSError(f"Qt could not write {path}")
    return pages


__all__ = ["nice_ticks", "plot_history", "plot_series", "render_run_pdf", "series_title", "time_ticks"]
