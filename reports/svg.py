"""Plot primitives that write inline SVG text: scales, axes, lines, stacked areas, bars, shading.

No plotting library and no script from the network: a chart is a string of SVG elements, styled
with attributes so it renders the same inside the report, in a browser's file view, or pasted
elsewhere. Hover help comes from a ``data-tip`` attribute on points and shapes (shown by the
report's few lines of inline JS) and a ``<title>`` child (shown natively when JS is off).
Values may be nan (a gap: the line breaks) or inf (clipped to the top, drawn as a red cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
FAULT_FILL = "#d62728"
INF_COLOR = "#b00020"


def esc(text: object) -> str:
    return escape(str(text), quote=True)


def fmt(value: float, unit: str = "") -> str:
    """Short human number: 3 significant figures, inf and nan spelled out."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return f"{text} {unit}".rstrip() if unit else text


@dataclass(frozen=True)
class Scale:
    """Maps a data interval onto a pixel interval, linearly or in log10."""

    lo: float
    hi: float
    px0: float
    px1: float
    log: bool = False

    def __post_init__(self) -> None:
        if self.log and self.lo <= 0:
            raise ValueError(f"a log scale needs lo > 0, got {self.lo}")
        if not self.hi > self.lo:
            object.__setattr__(self, "hi", self.lo + (abs(self.lo) or 1.0))

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
        a, b = self._t(self.lo), self._t(self.hi)
        return self.px0 + (self._t(v) - a) / (b - a) * (self.px1 - self.px0)

    def ticks(self, n: int = 5) -> list[float]:
        if self.log:
            return log_ticks(self.lo, self.hi)
        return linear_ticks(self.lo, self.hi, n)


def linear_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    out = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append(v)
    if len(out) > 9:
        out = [v for v in out if str(v).lstrip("0.").startswith("1")]
    return out


def finite_max(values: Sequence[float], default: float = 1.0) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return max(vals) if vals else default


@dataclass
class Chart:
    """One plot area with axes; add marks, then :meth:`render`."""

    title: str
    x: Scale
    y: Scale
    width: int = 900
    height: int = 300
    x_label: str = ""
    y_label: str = ""
    x_ticks: Sequence[tuple[float, str]] | None = None
    css_class: str = "chart"
    y_axis: bool = True
    parts: list[str] = field(default_factory=list)
    legend_items: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def frame(
        cls,
        title: str,
        x: tuple[float, float],
        y: tuple[float, float],
        *,
        width: int = 900,
        height: int = 300,
        y_log: bool = False,
        x_log: bool = False,
        left: int = 64,
        **kw: object,
    ) -> Chart:
        right, top, bottom = 16, 34, 46
        xs = Scale(x[0], x[1], left, width - right, x_log)
        ys = Scale(y[0], y[1], height - bottom, top, y_log)
        return cls(title, xs, ys, width, height, **kw)  # type: ignore[arg-type]

    # marks ---------------------------------------------------------------------------------
    def shade(
        self,
        x0: float,
        x1: float,
        label: str,
        tip: str = "",
        color: str = FAULT_FILL,
        opacity: float = 0.13,
    ) -> None:
        """A full-height band (a fault window) with its label at the top."""
        a, b = self.x(max(x0, self.x.lo)), self.x(min(x1, self.x.hi))
        if b <= a:
            return
        top, bottom = self.y.px1, self.y.px0
        tip = tip or label
        self.parts.append(
            f'<g class="fault-window" data-tip="{esc(tip)}"><title>{esc(tip)}</title>'
            f'<rect x="{a:.1f}" y="{top:.1f}" width="{b - a:.1f}" height="{bottom - top:.1f}" '
            f'fill="{color}" fill-opacity="{opacity}"/>'
            f'<line x1="{a:.1f}" y1="{top:.1f}" x2="{a:.1f}" y2="{bottom:.1f}" stroke="{color}" '
            f'stroke-dasharray="3,3"/>'
            f'<text x="{a + 3:.1f}" y="{top + 11:.1f}" font-size="10" fill="{color}">'
            f"{esc(label)}</text></g>"
        )

    def vline(
        self, x: float, label: str, color: str = "#444", tip: str = "", label_dy: float = 0.0
    ) -> None:
        px = self.x(x)
        tip = tip or label
        self.parts.append(
            f'<g class="marker" data-tip="{esc(tip)}"><title>{esc(tip)}</title>'
            f'<line x1="{px:.1f}" y1="{self.y.px1:.1f}" x2="{px:.1f}" y2="{self.y.px0:.1f}" '
            f'stroke="{color}" stroke-width="1.5" stroke-dasharray="6,3"/>'
            f'<text x="{px + 3:.1f}" y="{self.y.px1 + 22 + label_dy:.1f}" font-size="10" '
            f'fill="{color}">'
            f"{esc(label)}</text></g>"
        )

    def hline(self, y: float, label: str, color: str = "#555") -> None:
        if not self.y.lo <= y <= self.y.hi:
            return
        py = self.y(y)
        self.parts.append(
            f'<g class="budget"><line x1="{self.x.px0:.1f}" y1="{py:.1f}" x2="{self.x.px1:.1f}" '
            f'y2="{py:.1f}" stroke="{color}" stroke-dasharray="8,4"/>'
            f'<text x="{self.x.px1 - 4:.1f}" y="{py - 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="{color}">{esc(label)}</text></g>'
        )

    def line(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        name: str,
        color: str,
        unit: str = "ms",
        x_fmt=None,
        dots: bool = True,
    ) -> None:
        """A polyline broken at nan; inf values are drawn at the top as caps."""
        x_fmt = x_fmt or (lambda v: f"{v:g} s")
        runs: list[list[str]] = [[]]
        marks = []
        for xv, yv in zip(xs, ys, strict=True):
            if yv is None or math.isnan(yv):
                runs.append([])
                continue
            px = self.x(xv)
            if math.isinf(yv):
                runs.append([])
                marks.append(
                    f'<rect x="{px - 3:.1f}" y="{self.y.px1 - 2:.1f}" width="6" height="6" '
                    f'fill="{INF_COLOR}" data-tip="{esc(name)} at {esc(x_fmt(xv))}: inf '
                    f'(failures reach this rank)"><title>{esc(name)}: inf</title></rect>'
                )
                continue
            py = self.y(min(max(yv, self.y.lo), self.y.hi))
            runs[-1].append(f"{px:.1f},{py:.1f}")
            if dots:
                tip = f"{name} at {x_fmt(xv)}: {fmt(yv, unit)}"
                marks.append(
                    f'<circle class="pt" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}" '
                    f'data-tip="{esc(tip)}"><title>{esc(tip)}</title></circle>'
                )
        for pts in runs:
            if len(pts) > 1:
                self.parts.append(
                    f'<polyline class="series" fill="none" stroke="{color}" stroke-width="1.6" '
                    f'points="{" ".join(pts)}"/>'
                )
        self.parts.extend(marks)
        self.legend_items.append((name, color))

    def stacked(
        self,
        xs: Sequence[float],
        layers: Sequence[tuple[str, Sequence[float]]],
        colors: Sequence[str],
        step: float,
    ) -> None:
        """Stacked columns per x (each ``step`` wide): shares over time."""
        base = [0.0] * len(xs)
        for (name, values), color in zip(layers, colors, strict=False):
            if not any(v > 0 for v in values):
                continue
            for i, (xv, v) in enumerate(zip(xs, values, strict=True)):
                if v <= 0:
                    continue
                y0, y1 = self.y(base[i]), self.y(base[i] + v)
                a, b = self.x(xv), self.x(xv + step)
                tip = f"{name} at {xv:g} s: {v * 100:.1f}%"
                self.parts.append(
                    f'<rect class="seg" x="{a:.1f}" y="{y1:.1f}" width="{max(b - a, 0.5):.1f}" '
                    f'height="{max(y0 - y1, 0.0):.1f}" fill="{color}" data-tip="{esc(tip)}">'
                    f"<title>{esc(tip)}</title></rect>"
                )
                base[i] += v
            self.legend_items.append((name, color))

    def hbar(
        self, y_center: float, x0: float, x1: float, color: str, tip: str, thickness: float = 10
    ) -> None:
        a, b = self.x(x0), self.x(min(x1, self.x.hi))
        self.parts.append(
            f'<rect class="bar" x="{a:.1f}" y="{y_center - thickness / 2:.1f}" '
            f'width="{max(b - a, 1):.1f}" height="{thickness:.1f}" fill="{color}" '
            f'data-tip="{esc(tip)}"><title>{esc(tip)}</title></rect>'
        )

    def text(
        self,
        x_px: float,
        y_px: float,
        text: str,
        anchor: str = "start",
        size: int = 11,
        color: str = "#222",
    ) -> None:
        self.parts.append(
            f'<text x="{x_px:.1f}" y="{y_px:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{color}">{esc(text)}</text>'
        )

    # frame ---------------------------------------------------------------------------------
    def _axes(self) -> list[str]:
        x0, x1, y0, y1 = self.x.px0, self.x.px1, self.y.px0, self.y.px1
        out = [
            f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="#fff" '
            f'stroke="#ccc"/>'
        ]
        for v in self.y.ticks() if self.y_axis else ():
            py = self.y(v)
            out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#eee"/>')
            out.append(
                f'<text x="{x0 - 6}" y="{py + 3:.1f}" font-size="10" text-anchor="end" '
                f'fill="#444">{esc(fmt(v))}</text>'
            )
        ticks = self.x_ticks if self.x_ticks is not None else [(v, fmt(v)) for v in self.x.ticks(8)]
        for v, label in ticks:
            px = self.x(v)
            out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" stroke="#888"/>')
            out.append(
                f'<text x="{px:.1f}" y="{y0 + 15}" font-size="10" text-anchor="middle" '
                f'fill="#444">{esc(label)}</text>'
            )
        if self.x_label:
            out.append(
                f'<text x="{(x0 + x1) / 2:.1f}" y="{self.height - 6}" font-size="11" '
                f'text-anchor="middle" fill="#222">{esc(self.x_label)}</text>'
            )
        if self.y_label:
            out.append(
                f'<text transform="translate(13,{(y0 + y1) / 2:.1f}) rotate(-90)" '
                f'font-size="11" text-anchor="middle" fill="#222">{esc(self.y_label)}</text>'
            )
        return out

    def _legend(self) -> list[str]:
        out, px = [], self.x.px0 + 4
        seen = set()
        for name, color in self.legend_items:
            if name in seen:
                continue
            seen.add(name)
            out.append(
                f'<rect x="{px:.1f}" y="19" width="10" height="10" fill="{color}"/>'
                f'<text x="{px + 13:.1f}" y="28" font-size="11" fill="#222">'
                f"{esc(name)}</text>"
            )
            px += 22 + 7 * len(name)
        return out

    def render(self) -> str:
        body = "".join(self._axes() + self.parts + self._legend())
        return (
            f'<svg class="{esc(self.css_class)}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" role="img" aria-label="{esc(self.title)}">'
            f"<title>{esc(self.title)}</title>"
            f'<text x="{self.x.px0}" y="13" font-size="13" font-weight="bold" fill="#111">'
            f"{esc(self.title)}</text>{body}</svg>"
        )
