"""Charts drawn on the server as inline SVG: no chart library to ship, nothing to run
in the browser, and a live update is the same function's output sent again.

Only numbers and escaped labels go into the markup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["Series", "line_chart"]

Series = tuple[str, Sequence[float], str]
"""A line: its label, its values (one per time) and its CSS class (its colour)."""


def _nice(top: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `top`."""
    if top <= 0:
        return 1.0
    scale = 10.0 ** len(str(int(top))) / 10.0 if top >= 1 else 1.0
    while scale > top and scale > 1e-3:
        scale /= 10.0
    for step in (1, 2, 5, 10):
        if step * scale >= top:
            return step * scale
    return 10 * scale


def _label(value: float) -> str:
    return f"{value:g}" if value < 1000 else f"{value / 1000:g}k"


def line_chart(
    title: str,
    times: Sequence[float],
    series: Sequence[Series],
    *,
    unit: str = "",
    width: int = 640,
    height: int = 180,
) -> Markup:
    """An SVG line chart of `series` over `times` (unix seconds, oldest first)."""
    left, right, top, bottom = 44, 8, 22, 22
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice(max((max(values, default=0.0) for _, values, _ in series), default=0.0))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text class="chart-title" x="{left}" y="14">{escape(title)}</text>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_label(peak * fraction))}</text>"
        )
    if len(times) >= 2:
        start, end = times[0], times[-1]
        span = max(end - start, 1e-9)
        for _, values, css in series:
            points = " ".join(
                f"{left + plot_w * (t - start) / span:.1f},{top + plot_h * (1 - v / peak):.1f}"
                for t, v in zip(times, values, strict=False)
            )
            parts.append(f'<polyline class="line {escape(css)}" points="{points}"/>')
        parts.append(
            f'<text class="axis" x="{left}" y="{height - 6}">{escape(_clock(start))}</text>'
            f'<text class="axis" x="{width - right}" y="{height - 6}" text-anchor="end">'
            f"{escape(_clock(end))} UTC</text>"
        )
    else:
        parts.append(
            f'<text class="axis" x="{left + plot_w / 2:.0f}" y="{top + plot_h / 2:.0f}" '
            'text-anchor="middle">collecting samples…</text>'
        )
    x = left + 7.5 * len(title) + 18  # after the title (about 7.5 px a character)
    for label, values, css in series:
        last = values[-1] if values else 0.0
        parts.append(
            f'<text class="legend {escape(css)}" x="{x:.0f}" y="14">'
            f"{escape(label)} {escape(f'{last:.3g}')}{escape(unit)}</text>"
        )
        x += 7.0 * len(label) + 70
    parts.append("</svg>")
    return Markup("".join(parts))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at))
