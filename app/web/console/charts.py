"""Small charts drawn on the server as SVG (no script): horizontal bars with their labels
and values, readable without colour (every bar is labelled with its number)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

ROW = 22
LABEL_WIDTH = 130
BAR_WIDTH = 220

_OPEN = Markup(
    '<svg class="chart" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" '
    'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{title}</title>'
)
_EMPTY = Markup('<text x="0" y="16" class="chart-label">nothing yet</text>')
_BAR = Markup(
    '<text x="0" y="{text_y}" class="chart-label">{label}</text>'
    '<rect x="{x}" y="{bar_y}" width="{bar}" height="{bar_height}" class="chart-bar chart-{kind}"/>'
    '<text x="{value_x}" y="{text_y}" class="chart-value">{value}</text>'
)


def bar_chart(title: str, items: Sequence[tuple[str, int]]) -> Markup:
    """One bar per (label, value); an empty chart says so. Every text is escaped (Markup's
    ``format``)."""
    height = max(1, len(items)) * ROW + 4
    width = LABEL_WIDTH + BAR_WIDTH + 60
    largest = max((v for _, v in items), default=0) or 1
    parts = [_OPEN.format(title=title, width=width, height=height)]
    if not items:
        parts.append(_EMPTY)
    for row, (label, value) in enumerate(items):
        y = row * ROW + 2
        bar = max(1, round(BAR_WIDTH * value / largest)) if value else 1
        parts.append(
            _BAR.format(
                text_y=y + 15,
                label=label,
                x=LABEL_WIDTH,
                bar_y=y + 3,
                bar=bar,
                bar_height=ROW - 8,
                kind=label.lower(),
                value_x=LABEL_WIDTH + bar + 6,
                value=value,
            )
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
