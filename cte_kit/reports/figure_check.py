"""Can a figure be read? Overlapping text, clipped labels, legends over data, points that vanished.

:func:`figure_problems` draws a finished matplotlib figure and lists, in plain words, what a reader
would stumble over:

* two pieces of text that overlap (point names, tick labels, titles, legend entries, notes);
* text or a legend cut off at the edge of the figure;
* a legend or a text box that covers a data point, or a legend that covers a line;
* a point that is not drawn - a NaN value or a value outside the axes' limits - while no text of
  the figure says so (the kit's plots write a note containing "not plotted" for such points).

The tests run it on every figure the kit's plotting functions and the teaching notebooks make;
call it on your own figures the same way (it draws the figure once, with the Agg renderer).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MISSING_NOTE", "figure_problems"]

#: Words that a figure's text must contain when some of its points cannot be drawn.
MISSING_NOTE = "not plotted"

_TOLERANCE = 1.0  # pixels: extents that merely touch do not overlap


def figure_problems(figure) -> list[str]:
    """What makes ``figure`` hard to read, one sentence per problem (empty when none).

    Parameters
    ----------
    figure : matplotlib.figure.Figure

    Returns
    -------
    list of str
    """
    if not hasattr(figure.canvas, "get_renderer"):  # a figure made without pyplot: give it an Agg canvas
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(figure)
    figure.canvas.draw()  # runs the layout engine: every extent below is final
    renderer = figure.canvas.get_renderer()
    canvas = figure.bbox
    texts = _drawn_texts(figure, renderer)
    legends = [legend for legend in _legends(figure) if legend.get_visible()]
    # entries of one legend are laid out by the legend itself
    legend_of = {id(text): index for index, legend in enumerate(legends)
                 for text in [*legend.get_texts(), legend.get_title()]}
    problems = []

    for text, box in texts:
        if not _inside(box, canvas):
            problems.append(f"text {_quote(text)} is cut off at the edge of the figure")
    for legend in legends:
        if not _inside(legend.get_window_extent(renderer), canvas):
            problems.append(f"the legend ({_legend_name(legend)}) is cut off at the edge of the figure")

    for i in range(len(texts)):
        for j in range(i):
            together = legend_of.get(id(texts[i][0]), -1) == legend_of.get(id(texts[j][0]), -2)
            if _overlaps(texts[i][1], texts[j][1]) and not together:
                problems.append(f"texts {_quote(texts[j][0])} and {_quote(texts[i][0])} overlap")

    points = _points(figure)
    for legend in legends:
        box = legend.get_window_extent(renderer)
        covered = [label for label, xy in points if _contains(box, xy)]
        if covered:
            problems.append(f"the legend ({_legend_name(legend)}) covers {len(covered)} data point(s)")
        crossed = [line for line in _data_lines(figure) if _crosses(box, line)]
        if crossed:
            problems.append(f"the legend ({_legend_name(legend)}) covers the line(s) "
                            f"{', '.join(_line_name(line) for line in crossed)}")
    for text, box in texts:
        if not _is_annotation_of_data(text):
            continue
        covered = [xy for _, xy in points if _contains(box, xy)]
        if covered:
            problems.append(f"text {_quote(text)} covers {len(covered)} data point(s)")

    missing = _missing_points(figure)
    if missing and not any(MISSING_NOTE in " ".join(text.get_text().split()) for text, _ in texts):  # wrapped too
        problems.append(f"{missing} data point(s) are not drawn (NaN or outside the axes) and no text says so "
                        f"(a note containing {MISSING_NOTE!r})")
    return problems


# -- what is drawn ------------------------------------------------------------------------------
def _drawn_texts(figure, renderer) -> list:
    """(Text, display-space extent) of every visible, non-empty text the figure draws."""
    from matplotlib.text import Text

    ticks = {id(label): (axis, tick) for axes in figure.axes for axis in (axes.xaxis, axes.yaxis)
             for tick in axis.get_major_ticks() + axis.get_minor_ticks() for label in (tick.label1, tick.label2)}
    hidden = {id(artist) for legend in _legends(figure) if not legend.get_visible() for artist in legend.findobj()}
    found = []
    for text in figure.findobj(Text):
        if not text.get_visible() or not text.get_text().strip() or id(text) in hidden:
            continue
        axes = getattr(text, "axes", None)
        if axes is not None and not axes.get_visible():
            continue
        if id(text) in ticks and not _tick_drawn(*ticks[id(text)]):
            continue
        box = Text.get_window_extent(text, renderer)  # the text alone: an annotation's leader line is not text
        if box.width > 0 and box.height > 0:
            found.append((text, box))
    return found


def _tick_drawn(axis, tick) -> bool:
    """Tick labels exist for ticks outside the view; only those inside it are drawn."""
    location = tick.get_loc()
    if location is None:
        return False
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(high - low, 1e-12)
    return low - slack <= location <= high + slack


def _legends(figure) -> list:
    legends = list(figure.legends)
    for axes in figure.axes:
        if axes.get_visible() and axes.get_legend() is not None:
            legends.append(axes.get_legend())
    return legends


def _legend_name(legend) -> str:
    labels = [text.get_text() for text in legend.get_texts()]
    return "entries " + ", ".join(repr(label) for label in labels[:3]) + (" ..." if len(labels) > 3 else "")


def _is_annotation_of_data(text) -> bool:
    """Texts placed on the data (point names, boxes of numbers inside the axes), not titles or tick labels."""
    axes = getattr(text, "axes", None)
    return axes is not None and text in axes.texts


def _points(figure) -> list:
    """(label, display xy) of every drawn scatter point and line marker."""
    points = []
    for axes in figure.axes:
        if not axes.get_visible():
            continue
        for collection in axes.collections:
            offsets = _finite(np.asarray(collection.get_offsets(), float))
            if collection.get_visible() and len(offsets) and _is_scatter(collection):
                transform = collection.get_offset_transform()
                points += [(collection.get_label(), xy) for xy in transform.transform(offsets)]
        for line in _marker_lines(axes):
            xy = _finite(np.column_stack([line.get_xdata(orig=False), line.get_ydata(orig=False)]).astype(float))
            points += [(line.get_label(), p) for p in line.get_transform().transform(xy)]
    return points


#: Markers that end an error bar (its caps) rather than mark a data point.
_CAPS = ("|", "_", 2, 3)


def _marker_lines(axes) -> list:
    """Lines that mark data points: visible, with a marker that is not an error bar's cap."""
    return [line for line in axes.lines if line.get_visible() and line.get_marker() not in (None, "", "None", " ")
            and line.get_marker() not in _CAPS]


def _is_scatter(collection) -> bool:
    from matplotlib.collections import PathCollection

    return isinstance(collection, PathCollection)


def _data_lines(figure) -> list:
    return [line for axes in figure.axes if axes.get_visible() for line in axes.lines
            if line.get_visible() and len(line.get_xdata(orig=False)) > 0]


def _missing_points(figure) -> int:
    """Points given to a scatter or a marker line that are not drawn: NaN, or outside the axes' view."""
    missing = 0
    for axes in figure.axes:
        if not axes.get_visible():
            continue
        (x0, x1), (y0, y1) = sorted(axes.get_xlim()), sorted(axes.get_ylim())
        series = [np.asarray(c.get_offsets(), float) for c in axes.collections if _is_scatter(c) and c.get_visible()]
        series += [np.column_stack([line.get_xdata(orig=False), line.get_ydata(orig=False)]).astype(float)
                   for line in _marker_lines(axes)]
        for xy in series:
            if xy.size == 0:
                continue
            xy = xy.reshape(-1, 2)
            finite = np.isfinite(xy).all(axis=1)
            missing += int((~finite).sum())
            shown = xy[finite]
            outside = (shown[:, 0] < x0) | (shown[:, 0] > x1) | (shown[:, 1] < y0) | (shown[:, 1] > y1)
            missing += int(outside.sum())
    return missing


def _finite(xy: np.ndarray) -> np.ndarray:
    xy = xy.reshape(-1, 2)
    return xy[np.isfinite(xy).all(axis=1)]


# -- geometry -----------------------------------------------------------------------------------
def _inside(box, outer) -> bool:
    return (box.x0 >= outer.x0 - _TOLERANCE and box.x1 <= outer.x1 + _TOLERANCE
            and box.y0 >= outer.y0 - _TOLERANCE and box.y1 <= outer.y1 + _TOLERANCE)


def _overlaps(a, b) -> bool:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width > _TOLERANCE and height > _TOLERANCE


def _contains(box, xy) -> bool:
    return box.x0 < xy[0] < box.x1 and box.y0 < xy[1] < box.y1


def _crosses(box, line) -> bool:
    """Whether the drawn line passes through ``box`` (its segments sampled every few pixels)."""
    path = line.get_transform().transform_path(line.get_path())
    vertices = np.asarray(path.vertices, float)
    vertices = vertices[np.isfinite(vertices).all(axis=1)]
    if len(vertices) == 0:
        return False
    samples = [vertices]
    for start, end in zip(vertices[:-1], vertices[1:]):
        steps = int(np.ceil(np.hypot(*(end - start)) / 3.0))
        if steps > 1:
            samples.append(start + np.linspace(0.0, 1.0, steps)[:, None] * (end - start))
    xy = np.concatenate(samples)
    inner = (xy[:, 0] > box.x0 + _TOLERANCE) & (xy[:, 0] < box.x1 - _TOLERANCE) \
        & (xy[:, 1] > box.y0 + _TOLERANCE) & (xy[:, 1] < box.y1 - _TOLERANCE)
    return bool(inner.any())


def _quote(text) -> str:
    value = " ".join(text.get_text().split())
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _line_name(line) -> str:
    label = line.get_label()
    return repr(label) if label and not label.startswith("_") else "(unlabelled line)"
