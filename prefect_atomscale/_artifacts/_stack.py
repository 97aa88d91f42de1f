"""What a stack run shows in the Prefect UI: a table of its layers and a picture of the stack.

`publish_stack_artifacts` (and its async twin) publish two artifacts for a stack: a
table (position, formula, orientation, space group, Materials Project id, record id)
and a markdown artifact with an SVG picture of the stack, substrate at the bottom and
repeated periods collapsed to "x 20", so a scientist reads it at a glance. For a stack
that is only partly written, an optional status per layer (`created`, `already there`,
`failed`, `not attempted`) adds a status column and marks the layers that are not in
place in the picture, with a legend; an optional reason per layer adds a reason column.
With the target material's address in the Atomscale web app, the picture's caption and
the table's description link to it ("Open in Atomscale"). `publish_unwritten_stack`
shows a stack whose target material was not created (the stack-file flows' failures).
Only `publish_stack_artifacts`, its async twin and `StackArtifacts` are public; the
pieces (`stack_table`, `stack_svg`, `stack_markdown`, ...) are their implementation.
"""

from __future__ import annotations

import base64
import colorsys
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID
from xml.sax.saxutils import escape, quoteattr

from prefect_atomscale._models import Layer, TargetMaterial

__all__ = [
    "IN_PLACE",
    "LAYER_STATUSES",
    "StackArtifacts",
    "apublish_stack_artifacts",
    "artifact_key",
    "collapse_repeats",
    "describe_stack",
    "distinct_fills",
    "plural",
    "publish_stack_artifacts",
    "publish_unwritten_stack",
    "stack_markdown",
    "stack_svg",
    "stack_table",
    "table_cell",
]


# What happened to a layer in a run, as the table and the picture show it.
LAYER_STATUSES = ("created", "already there", "failed", "not attempted")
# The statuses of a layer whose record is at the service.
IN_PLACE = ("created", "already there")


def plural(count: int, noun: str) -> str:
    """`1 layer`, `2 layers`: a count and its noun, plural unless the count is one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def collapse_repeats(keys: Sequence[Hashable]) -> list[tuple[int, int, int]]:
    """Split a sequence into runs of a repeated period, as few drawn rows as possible.

    Used to draw a 20-period superlattice as one period marked "x 20", whether the
    stack came from a repeat block or was written out layer by layer.

    Args:
        keys: One key per layer in stack order, e.g. `(formula, orientation)`.

    Returns:
        `(start, period, count)` triples covering `keys` in order: `keys[start :
        start + period]` repeated `count` times. Single layers have period 1, count 1.
    """
    n = len(keys)
    # cost counts drawn rows, in halves: a band is 2, the bracket of a block is 1, so
    # a block of p layers drawn once beats writing them out whenever it repeats.
    cost = [0] * (n + 1)
    choice: list[tuple[int, int]] = [(1, 1)] * (n + 1)
    for start in range(n - 1, -1, -1):
        cost[start] = 2 + cost[start + 1]
        choice[start] = (1, 1)
        for period in range(1, min(16, (n - start) // 2) + 1):
            unit = keys[start : start + period]
            count = 1
            while (
                start + (count + 1) * period <= n
                and keys[start + count * period : start + (count + 1) * period] == unit
            ):
                count += 1
            if count < 2:
                continue
            total = 2 * period + 1 + cost[start + count * period]
            if total < cost[start]:
                cost[start] = total
                choice[start] = (period, count)
    segments: list[tuple[int, int, int]] = []
    start = 0
    while start < n:
        period, count = choice[start]
        segments.append((start, period, count))
        start += period * count
    return segments


def _sorted(layers: Sequence[Layer]) -> list[Layer]:
    return sorted(layers, key=lambda layer: (layer.layer_id, layer.id))


def _label(layer: Layer) -> str:
    formula = layer.composition_string or "?"
    return f"{formula} ({layer.orientation})" if layer.orientation else formula


def describe_stack(substrate: str, layers: Sequence[Layer]) -> str:
    """Write a stack in one line, bottom to top, repeats collapsed.

    Args:
        substrate: The substrate.
        layers: The layers, in any order.

    Returns:
        E.g. `SrTiO3 substrate -> L1 SrRuO3 (001) -> L2-L41 20 x (BaTiO3 (001) /
        SrTiO3 (001)) -> L42 SrRuO3 (001)`.
    """
    ordered = _sorted(layers)
    keys = [(layer.composition_string, layer.orientation) for layer in ordered]
    parts = [_substrate_label(substrate)]
    for start, period, count in collapse_repeats(keys):
        first, last = ordered[start], ordered[start + period * count - 1]
        if count == 1:
            parts.append(f"L{first.layer_id} {_label(first)}")
            continue
        unit = " / ".join(_label(layer) for layer in ordered[start : start + period])
        parts.append(f"L{first.layer_id}-L{last.layer_id} {count} \u00d7 ({unit})")
    return " \u2192 ".join(parts)


def _substrate_label(substrate: str) -> str:
    """`SrTiO3 substrate`; a text that already says substrate is not said twice."""
    return substrate if substrate.endswith("substrate") else f"{substrate} substrate"


def _in_place(layer: Layer, status: Mapping[int, str] | None) -> bool:
    return status is None or status.get(layer.layer_id, "created") in IN_PLACE


def stack_table(
    layers: Sequence[Layer],
    status: Mapping[int, str] | None = None,
    reasons: Mapping[int, str] | None = None,
) -> list[dict[str, str | int]]:
    """Rows of the layer table artifact, L1 (on the substrate) first.

    Args:
        layers: The layers, in any order.
        status: Position -> `created`, `already there`, `failed` or `not attempted`;
            adds a status column. A layer not in place shows no record id.
        reasons: Position -> why that layer is not in place; with `status`, adds a
            reason column (a dash for the others).

    Returns:
        One row per layer: position, formula, orientation, space group, mp id, record
        id (and status, and reason).
    """
    rows: list[dict[str, str | int]] = []
    for layer in _sorted(layers):
        row: dict[str, str | int] = {
            "position": layer.layer_id,
            "formula": layer.composition_string or "\u2014",
            "orientation": f"({layer.orientation})" if layer.orientation else "\u2014",
            "space group": layer.space_group or "\u2014",
            "mp id": layer.mp_id or "\u2014",
            "record id": layer.id if _in_place(layer, status) else "\u2014",
        }
        if status is not None:
            row["status"] = status.get(layer.layer_id, "created")
            if reasons is not None:
                row["reason"] = table_cell(reasons.get(layer.layer_id) or "\u2014")
        rows.append(row)
    return rows


# Light fills that keep dark text readable and stay apart from each other.
_PALETTE = (
    "#9ecae1",
    "#fdbb84",
    "#a1d99b",
    "#fa9fb5",
    "#c6b4e3",
    "#fee08b",
    "#80cdc1",
    "#d9d9d9",
    "#f4a582",
    "#b3de69",
)
_GOLDEN_ANGLE = 137.50776405003785


def distinct_fills(count: int) -> list[str]:
    """`count` fill colours, all different: the palette, then hues by the golden angle.

    Light enough for dark text; deterministic, so a formula keeps its colour from run
    to run as long as the stack keeps its order.

    Args:
        count: How many colours.

    Returns:
        `#rrggbb` strings, no two alike.
    """
    fills: list[str] = []
    index = 0
    while len(fills) < count:
        if index < len(_PALETTE):
            fill = _PALETTE[index]
        else:
            hue = ((index - len(_PALETTE)) * _GOLDEN_ANGLE + 15) % 360 / 360
            # Alternate two lightnesses so neighbouring hues stay apart too.
            light = 0.80 if index % 2 else 0.72
            red, green, blue = colorsys.hls_to_rgb(hue, light, 0.65)
            fill = f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
        if fill not in fills and fill not in _NOT_IN_PLACE_FILLS:
            fills.append(fill)
        index += 1
    return fills


# Layers that are not in place: grey, with a red hatch for a failed one.
_FAILED_FILL = "#e4e7eb"
_NOT_ATTEMPTED_FILL = "#f5f7fa"
_NOT_IN_PLACE_FILLS = (_FAILED_FILL, _NOT_ATTEMPTED_FILL)
_FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
_WIDTH = 700
_BAND_X = 70
_BAND_WIDTH = 470
_ROW = 32
_SUBSTRATE = 48
_TOP = 16


def _tspans(pieces: Iterable[tuple[str, bool]], lowered_size: int, drop: int) -> str:
    """Render (text, lowered) pieces as tspans; lowered ones are subscripts."""
    out = []
    lowered = False
    for text, low in pieces:
        if not text:
            continue
        shift = (drop if low else -drop) if low != lowered else 0
        size = f' font-size="{lowered_size}"' if low else ""
        out.append(f'<tspan dy="{shift}"{size}>{escape(text)}</tspan>')
        lowered = low
    return "".join(out)


def _formula_pieces(formula: str) -> list[tuple[str, bool]]:
    """BaTiO3 -> BaTiO, then 3 lowered: counts are subscripts."""
    parts = re.split(r"(\d+(?:\.\d+)?)", formula)
    return [(part, index % 2 == 1) for index, part in enumerate(parts)]


def _formula_svg(formula: str, tail: str = "") -> str:
    """A formula with its counts as subscripts, then `tail` on the baseline."""
    return _tspans([*_formula_pieces(formula), (tail, False)], 11, 4)


def _space_group_pieces(symbol: str) -> list[tuple[str, bool]]:
    """P6_3mc -> P6, then 3 lowered, then mc: screw axes are subscripts."""
    parts = re.split(r"_(\d)", symbol)
    return [(part, index % 2 == 1) for index, part in enumerate(parts)]


def _formula_width(formula: str) -> int:
    """Rough width in pixels of a formula drawn by `_formula_svg` at 15 px bold."""
    counts = sum(len(number) for number in re.findall(r"\d+(?:\.\d+)?", formula))
    return round((len(formula) - counts) * 10.5 + counts * 7)


def _band(
    y: int,
    layer: Layer,
    fill: str,
    left_label: str | None,
    orientation_x: int,
    status: str = "created",
) -> list[str]:
    middle = y + _ROW // 2 + 5
    if status == "failed":
        parts = [
            f'<rect x="{_BAND_X}" y="{y}" width="{_BAND_WIDTH}" height="{_ROW}" '
            f'fill="{_FAILED_FILL}" stroke="#ffffff" stroke-width="1.5"/>',
            f'<rect x="{_BAND_X}" y="{y}" width="{_BAND_WIDTH}" height="{_ROW}" '
            'fill="url(#failed)" stroke="#c81e1e" stroke-width="1.5"/>',
        ]
    elif status == "not attempted":
        parts = [
            f'<rect x="{_BAND_X + 1}" y="{y + 1}" width="{_BAND_WIDTH - 2}" height="{_ROW - 2}" '
            f'fill="{_NOT_ATTEMPTED_FILL}" stroke="#7b8794" stroke-width="1.5" '
            'stroke-dasharray="5 3"/>',
        ]
    else:
        parts = [
            f'<rect x="{_BAND_X}" y="{y}" width="{_BAND_WIDTH}" height="{_ROW}" fill="{fill}" '
            'stroke="#ffffff" stroke-width="1.5"/>',
        ]
    parts.append(
        f'<text x="{_BAND_X + 12}" y="{middle}" font-size="15" font-weight="bold" '
        f'fill="#1f2933">{_formula_svg(layer.composition_string or "?")}</text>'
    )
    if layer.orientation:
        parts.append(
            f'<text x="{orientation_x}" y="{middle}" font-size="14" fill="#1f2933">'
            f"({escape(layer.orientation)})</text>"
        )
    extra = _space_group_pieces(layer.space_group) if layer.space_group else []
    if layer.mp_id:
        extra += [((" \u00b7 " if extra else "") + layer.mp_id, False)]
    if status in ("failed", "not attempted"):
        colour = "#c81e1e" if status == "failed" else "#52606d"
        mark = "\u2717 failed" if status == "failed" else "not attempted"
        parts.append(
            f'<rect x="{_BAND_X + _BAND_WIDTH - 122}" y="{y + 6}" width="114" '
            f'height="{_ROW - 12}" rx="3" fill="#ffffff" stroke="{colour}"/>'
            f'<text x="{_BAND_X + _BAND_WIDTH - 65}" y="{middle - 1}" font-size="12" '
            f'font-weight="bold" text-anchor="middle" fill="{colour}">{mark}</text>'
        )
    elif extra:
        parts.append(
            f'<text x="{_BAND_X + _BAND_WIDTH - 10}" y="{middle}" font-size="12" '
            f'text-anchor="end" fill="#3e4c59">{_tspans(extra, 9, 3)}</text>'
        )
    if left_label:
        parts.append(
            f'<text x="{_BAND_X - 8}" y="{middle}" font-size="13" text-anchor="end" '
            f'fill="#52606d">{escape(left_label)}</text>'
        )
    return parts


def stack_svg(
    substrate: str, layers: Sequence[Layer], status: Mapping[int, str] | None = None
) -> str:
    """Draw the stack as an SVG picture: substrate at the bottom, top layer on top.

    One band per layer, labelled with its formula (counts as subscripts), orientation,
    space group and Materials Project id, and its position on the left. Each formula
    has a colour of its own, substrate included: two bands share a colour only if they
    are the same material. A repeated period is drawn once with a bracket saying
    "x 20" and the positions it spans. With `status`, a failed layer is grey with a red
    hatch and "failed", one not attempted is grey and dashed, and a legend says so.

    Args:
        substrate: The substrate.
        layers: The layers, in any order.
        status: Position -> `created`, `already there`, `failed` or `not attempted`.

    Returns:
        A standalone SVG document.
    """
    ordered = _sorted(layers)
    formulas = list(
        dict.fromkeys([substrate, *(layer.composition_string or "?" for layer in ordered)])
    )
    colours = dict(zip(formulas, distinct_fills(len(formulas)), strict=True))
    states = {layer.layer_id: (status or {}).get(layer.layer_id, "created") for layer in ordered}
    shown = {state if state not in IN_PLACE else "created" for state in states.values()}
    segments = collapse_repeats(
        [
            (layer.composition_string, layer.orientation, states[layer.layer_id] in IN_PLACE)
            for layer in ordered
        ]
    )
    rows = sum(period for _, period, _ in segments)
    # Orientations line up in one column, just right of the widest formula.
    widest = max((_formula_width(layer.composition_string or "?") for layer in ordered), default=0)
    orientation_x = _BAND_X + 12 + max(widest, 90) + 18
    legend = [state for state in ("failed", "not attempted") if state in shown]
    height = _TOP + rows * _ROW + _SUBSTRATE + 30 + (26 if legend else 0)
    body: list[str] = []
    y = _TOP
    for start, period, count in reversed(segments):
        unit = ordered[start : start + period]
        top = y
        for layer in reversed(unit):
            label = f"L{layer.layer_id}" if count == 1 else None
            fill = colours[layer.composition_string or "?"]
            body += _band(y, layer, fill, label, orientation_x, states[layer.layer_id])
            y += _ROW
        if count > 1:
            first, last = ordered[start], ordered[start + period * count - 1]
            x = _BAND_X + _BAND_WIDTH + 10
            body += [
                # A bracket over the period's bands, then how often it repeats.
                f'<path d="M {x} {top + 3} h 8 v {y - top - 6} h -8" fill="none" '
                'stroke="#323f4b" stroke-width="2"/>',
                f'<text x="{x + 16}" y="{(top + y) // 2 + 2}" font-size="22" '
                f'font-weight="bold" fill="#1f2933">\u00d7 {count}</text>',
                f'<text x="{x + 16}" y="{(top + y) // 2 + 20}" font-size="12" '
                f'fill="#52606d">L{first.layer_id}\u2013L{last.layer_id} '
                f"({period * count} layers)</text>",
                # One period, outlined, stands for all of them.
                f'<rect x="{_BAND_X - 3}" y="{top - 2}" width="{_BAND_WIDTH + 6}" '
                f'height="{y - top + 4}" rx="3" fill="none" stroke="#323f4b" '
                'stroke-width="1.5" stroke-dasharray="6 3"/>',
                f'<text x="{_BAND_X - 8}" y="{(top + y) // 2 + 5}" font-size="12" '
                'text-anchor="end" fill="#52606d">period</text>',
            ]
    substrate_fill = colours[substrate]
    body += [
        f'<rect x="{_BAND_X}" y="{y}" width="{_BAND_WIDTH}" height="{_SUBSTRATE}" '
        f'fill="{substrate_fill}"/>',
        f'<rect x="{_BAND_X}" y="{y}" width="{_BAND_WIDTH}" height="{_SUBSTRATE}" '
        'fill="url(#hatch)"/>',
        f'<rect x="{_BAND_X + 8}" y="{y + 12}" width="{_BAND_WIDTH - 16}" height="24" rx="3" '
        'fill="#ffffff" fill-opacity="0.85"/>',
        f'<text x="{_BAND_X + _BAND_WIDTH // 2}" y="{y + 29}" font-size="15" '
        f'font-weight="bold" text-anchor="middle" fill="#1f2933">'
        f"{_formula_svg(substrate, _substrate_label(substrate).removeprefix(substrate))}</text>",
        f'<text x="{_BAND_X - 8}" y="{y + 29}" font-size="13" text-anchor="end" '
        'fill="#52606d">sub.</text>',
        # Growth direction: up, from the substrate.
        f'<path d="M 14 {y - 4} V {_TOP + 10}" stroke="#9aa5b1" stroke-width="2"/>',
        f'<path d="M 8 {_TOP + 16} L 14 {_TOP + 4} L 20 {_TOP + 16} Z" fill="#9aa5b1"/>',
        f'<text x="{_BAND_X}" y="{y + _SUBSTRATE + 20}" font-size="12" fill="#52606d">'
        "growth direction \u2191 \u00b7 L1 is grown first, on the substrate</text>",
    ]
    x = _BAND_X
    for state in legend:
        top = y + _SUBSTRATE + 32
        if state == "failed":
            body += [
                f'<rect x="{x}" y="{top}" width="28" height="14" fill="{_FAILED_FILL}"/>',
                f'<rect x="{x}" y="{top}" width="28" height="14" fill="url(#failed)" '
                'stroke="#c81e1e"/>',
                f'<text x="{x + 36}" y="{top + 12}" font-size="12" fill="#c81e1e">'
                "failed: not written, see the run\u2019s log</text>",
            ]
            x += 260
        else:
            body += [
                f'<rect x="{x}" y="{top}" width="28" height="14" fill="{_NOT_ATTEMPTED_FILL}" '
                'stroke="#7b8794" stroke-dasharray="5 3"/>',
                f'<text x="{x + 36}" y="{top + 12}" font-size="12" fill="#52606d">'
                "not attempted</text>",
            ]
    title = escape(describe_stack(substrate, ordered))
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family={quoteattr(_FONT)}>'
        f"<title>{title}</title>"
        '<defs><pattern id="hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="8" stroke="#52606d" '
        'stroke-opacity="0.35" stroke-width="2"/></pattern>'
        '<pattern id="failed" width="10" height="10" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(-45)"><line x1="0" y1="0" x2="0" y2="10" stroke="#c81e1e" '
        'stroke-opacity="0.45" stroke-width="3"/></pattern></defs>'
        f'<rect width="{_WIDTH}" height="{height}" fill="#ffffff"/>' + "".join(body) + "</svg>"
    )


def stack_markdown(
    material: TargetMaterial,
    layers: Sequence[Layer],
    *,
    summary: str | None = None,
    source: str | None = None,
    status: Mapping[int, str] | None = None,
    url: str | None = None,
) -> str:
    """The markdown artifact: a heading, one line of facts, the picture, the stack in words.

    The picture is `stack_svg` as a data-URI image, which the Prefect UI shows as is.

    Args:
        material: The target material.
        layers: Its layers, in any order.
        summary: What this run did, e.g. `40 created, 2 from the cache`.
        source: The stack file it came from, if any.
        status: Position -> `created`, `already there`, `failed` or `not attempted`.
        url: Its page in the Atomscale web app, linked as "Open in Atomscale".

    Returns:
        Markdown text.
    """
    return _markdown(_Subject.of(material), layers, summary, source, status, url)


@dataclass(frozen=True)
class _Subject:
    """Whose stack the artifacts show: a target material, or a file's that was not created."""

    name: str
    substrate: str | None
    sample_id: int | None

    @classmethod
    def of(cls, material: TargetMaterial) -> _Subject:
        # The service may leave a name or substrate out of a reply; say so, don't fail.
        name = material.sample_name or f"target material {material.sample_id}"
        return cls(name, material.substrate, material.sample_id)

    @property
    def drawn_substrate(self) -> str:
        return self.substrate or "unnamed substrate"

    @property
    def said_substrate(self) -> str:
        return self.substrate or "an unnamed substrate"

    @property
    def what(self) -> str:
        """Its name and record, for descriptions: cards show their first words."""
        record = (
            f"target material {self.sample_id}" if self.sample_id is not None else "not created"
        )
        return f"{self.name} ({record}) on {self.said_substrate}"

    @property
    def key(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        if len(slug) > 40:  # keys show in narrow cards; cut at a word
            slug = slug[:41].rsplit("-", 1)[0]
        record = f"s{self.sample_id}" if self.sample_id is not None else "not-created"
        return f"{slug or 'stack'}-{record}"


def _markdown(
    subject: _Subject,
    layers: Sequence[Layer],
    summary: str | None,
    source: str | None,
    status: Mapping[int, str] | None,
    url: str | None,
) -> str:
    substrate = subject.drawn_substrate
    svg = stack_svg(substrate, layers, status)
    image = base64.b64encode(svg.encode()).decode()
    if subject.sample_id is not None:
        facts = [
            f"Target material **{subject.sample_id}** on **{_md(subject.said_substrate)}**",
            plural(len(layers), "layer"),
        ]
    else:
        facts = [
            f"**Not created**, on **{_md(subject.said_substrate)}**",
            f"{plural(len(layers), 'layer')} in the file",
        ]
    if status is not None:
        states = [status.get(layer.layer_id, "created") for layer in layers]
        missing = [state for state in ("failed", "not attempted") if state in states]
        if missing:
            facts.append(
                ", ".join(
                    [f"**{sum(s in IN_PLACE for s in states)} in place**"]
                    + [f"**{states.count(state)} {state}**" for state in missing]
                )
            )
    if summary:
        facts.append(_md(summary))
    if source:
        facts.append(f"from `{source.replace('`', '')}`")
    if url:
        facts.append(_link("Open in Atomscale", url))
    # Alt text is plain: brackets or parentheses in it would end the image syntax.
    alt = re.sub(r"[\[\]()]", "", f"Stack of {subject.name} on {substrate}")
    heading = subject.name if subject.sample_id is not None else f"{subject.name} (not created)"
    return "\n\n".join(
        [
            f"### {_md(heading)}",
            " \u00b7 ".join(facts),
            f"![{alt}](data:image/svg+xml;base64,{image})",
            f"**Bottom to top:** {_md(describe_stack(substrate, layers))}",
        ]
    )


def _md(text: str) -> str:
    """Escape what markdown would read as formatting or HTML in a name."""
    return re.sub(r"([\\`*_\[\]<>#|])", r"\\\1", text)


def table_cell(text: str) -> str:
    """Text for a table artifact's cell: Prefect's default UI renders a text cell as markdown.

    Only what would change the text is escaped (a backslash shows as one in the newer
    UI, which shows cells as plain text): emphasis, code and link marks, HTML, and a
    heading, list or quote mark at the start. An underscore inside a word
    (`space_group`) is not emphasis and stays as it is.
    """
    text = " ".join(text.split())
    text = re.sub(r"([\\`*<>\[\]])", r"\\\1", text)
    text = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)
    text = re.sub(r"^([#+-])", r"\\\1", text)
    return re.sub(r"^(\d+)([.)])", r"\1\\\2", text)


def _link(text: str, url: str) -> str:
    """A markdown link; characters that would end its target are percent-encoded."""
    target = re.sub(r"[\s()<>]", lambda found: f"%{ord(found[0]):02X}", url)
    return f"[{text}]({target})"


def artifact_key(material: TargetMaterial) -> str:
    """The artifact key of a target material: its name in lowercase and dashes, and its id.

    Args:
        material: The target material.

    Returns:
        E.g. `bto-sto-superlattice-s42`; only lowercase letters, digits and dashes, as
        Prefect requires, the name part cut to 40 characters.
    """
    return _Subject(material.sample_name or "", material.substrate, material.sample_id).key


class StackArtifacts(NamedTuple):
    """The ids and key of the artifacts `publish_stack_artifacts` created.

    Attributes:
        table: Id of the table artifact (the layers).
        markdown: Id of the markdown artifact (the picture).
        key: The key both share a stem of: `layers-<key>` and `stack-<key>`.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import Layer, StackArtifacts, TargetMaterial, publish_stack_artifacts

        @flow
        def show() -> StackArtifacts:
            material = TargetMaterial(sample_id=4, sample_name="GaN film", substrate="Al2O3")
            layer = Layer(id=1, layer_id=1, sample_id=4, composition_string="GaN")
            return publish_stack_artifacts(material, [layer])

        artifacts = show()
        print(artifacts.key)  # gan-film-s4
        # The table's key and the picture's: one history of each per target material.
        print(f"layers-{artifacts.key}", f"stack-{artifacts.key}")
        # layers-gan-film-s4 stack-gan-film-s4
        ```
    """

    table: UUID
    markdown: UUID
    key: str


def _artifact_content(
    subject: _Subject,
    layers: Sequence[Layer],
    summary: str | None,
    source: str | None,
    status: Mapping[int, str] | None,
    reasons: Mapping[int, str] | None = None,
    url: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    key = subject.key
    states = [(status or {}).get(layer.layer_id, "created") for layer in layers]
    failed = [
        f"{states.count(state)} {state}" for state in ("failed", "not attempted") if state in states
    ]
    link = f" {_link('Open in Atomscale', url)}" if url else ""
    table = {
        "table": stack_table(layers, status, reasons),
        "key": f"layers-{key}",
        # Cards in the UI show the first few words of a description: say what it is first.
        "description": f"Layer table of {subject.what}: {plural(len(layers), 'layer')}"
        + (f" ({', '.join(failed)})" if failed else "")
        + ", L1 on the substrate."
        + link,
    }
    markdown = {
        "markdown": _markdown(subject, layers, summary, source, status, url),
        "key": f"stack-{key}",
        "description": f"Stack picture of {subject.what}, substrate at the bottom.",
    }
    return key, table, markdown


def _publish(
    subject: _Subject,
    layers: Sequence[Layer],
    summary: str | None,
    source: str | None,
    status: Mapping[int, str] | None,
    reasons: Mapping[int, str] | None,
    url: str | None,
) -> StackArtifacts:
    # Imported here: the rest of this module is useful without a Prefect API.
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key, table, markdown = _artifact_content(subject, layers, summary, source, status, reasons, url)
    table_id = create_table_artifact(**table)
    markdown_id = create_markdown_artifact(**markdown)
    if not isinstance(table_id, UUID) or not isinstance(markdown_id, UUID):
        raise TypeError("publish_stack_artifacts runs in sync code; await apublish_stack_artifacts")
    return StackArtifacts(table=table_id, markdown=markdown_id, key=key)


def publish_stack_artifacts(
    material: TargetMaterial,
    layers: Sequence[Layer],
    *,
    summary: str | None = None,
    source: str | None = None,
    status: Mapping[int, str] | None = None,
    reasons: Mapping[int, str] | None = None,
    url: str | None = None,
) -> StackArtifacts:
    """Publish the layer table and the stack picture as artifacts of the current run.

    Call it from a sync flow or task; async code uses `apublish_stack_artifacts`. The
    keys are `layers-<name>-s<id>` and `stack-<name>-s<id>`, so the Artifacts page
    keeps one history per target material.

    Args:
        material: The target material.
        layers: Its layers, in any order. For a stack written only in part, also the
            layers that are not in place, as they were asked for (their `id` is not
            shown).
        summary: What this run did, e.g. `40 created, 2 from the cache`.
        source: The stack file it came from, if any.
        status: Position -> `created`, `already there`, `failed` or `not attempted`,
            for a run that did not write every layer: the table gets a status column
            and the picture marks the layers that are not in place. Positions left
            out count as `created`.
        reasons: Position -> why that layer is not in place; with `status`, the
            table gets a reason column.
        url: The target material's page in the Atomscale web app: the picture's
            caption and the table's description link to it ("Open in Atomscale").

    Returns:
        The artifacts' ids and key.

    Raises:
        TypeError: Called from async code, where Prefect's artifact functions return
            coroutines.

    Example:
        ```python
        from prefect import flow
        from prefect_atomscale import (
            AtomscaleCredentials,
            create_layers,
            create_target_material,
            publish_stack_artifacts,
        )

        @flow
        def gan_hemt() -> None:
            credentials = AtomscaleCredentials.load("atomscale")
            material = create_target_material(credentials, "GaN HEMT #2", "Al2O3")
            layers = create_layers(credentials, material.sample_id, [
                {"composition_string": "AlN", "orientation": "0001"},
                {"composition_string": "GaN", "orientation": "0001"},
            ])
            publish_stack_artifacts(material, layers, summary=f"{len(layers)} layers")

        gan_hemt()
        ```
    """
    subject = _Subject.of(material)
    return _publish(subject, layers, summary, source, status, reasons, url)


def publish_unwritten_stack(
    name: str,
    substrate: str,
    layers: Sequence[Layer],
    *,
    summary: str,
    source: str,
    status: Mapping[int, str],
    reasons: Mapping[int, str],
) -> StackArtifacts:
    """The artifacts of a stack whose target material was not created, drawn as asked for.

    For the stack-file flows' failures before a target material exists (the service
    refused the whole stack, or was unreachable, or the name is taken): keys
    `layers-<name>-not-created` and `stack-<name>-not-created`.
    """
    subject = _Subject(name, substrate, None)
    return _publish(subject, layers, summary, source, status, reasons, None)


async def apublish_stack_artifacts(
    material: TargetMaterial,
    layers: Sequence[Layer],
    *,
    summary: str | None = None,
    source: str | None = None,
    status: Mapping[int, str] | None = None,
    reasons: Mapping[int, str] | None = None,
    url: str | None = None,
) -> StackArtifacts:
    """Async twin of `publish_stack_artifacts`: same arguments, result and errors."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    key, table, markdown = _artifact_content(
        _Subject.of(material), layers, summary, source, status, reasons, url
    )
    table_id = await acreate_table_artifact(**table)
    markdown_id = await acreate_markdown_artifact(**markdown)
    return StackArtifacts(table=table_id, markdown=markdown_id, key=key)
