"""What quality control hands a biologist: tables, label images napari opens, and one HTML file.

* :func:`write_tables` - ``images.csv`` (least reliable first) and ``objects.csv`` (image, object id,
  centroid, area, score, stability, agreement), and the same as Parquet;
* :func:`write_napari` - per image ``napari/<image>_labels.tif`` (the chosen model's clean instance
  labels), ``napari/<image>_objects.csv`` (one row per object; its ``index`` column holds the label
  value, which is how a napari ``Labels`` layer matches a row of its ``features`` to a label) and
  ``napari/<image>_score.tif`` (each object's pixels set to its score, NaN elsewhere). Open them with::

      import napari, pandas, tifffile
      viewer = napari.Viewer()
      viewer.add_image(tifffile.imread("image.tif"))
      viewer.add_labels(tifffile.imread("napari/image_labels.tif"), name="objects",
                        features=pandas.read_csv("napari/image_objects.csv"))
      viewer.add_image(tifffile.imread("napari/image_score.tif"), colormap="viridis", contrast_limits=(0, 1),
                       name="object score", opacity=0.6)

  Hovering over an object then shows its score, stability and agreement in the status bar;
* :func:`write_report` - ``report.html``, self-contained (figures embedded as base64 PNG, no script, no
  external style sheet or font: it opens from a file, offline): what the scores mean and do not mean,
  histograms, the per-image table and the least reliable images as overlays (image, clean prediction,
  where the perturbed prediction differs, objects coloured by score).
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..data.images import normalize_percentile, to_grey
from ..runs.quality import DOUBTFUL, QualityControl
from ..runs.store import ResultStore, write_csv, write_parquet

__all__ = ["plot_quality_histograms", "plot_quality_image", "score_image", "write_napari", "write_report",
           "write_tables"]


def score_image(labels, ids, scores) -> np.ndarray:
    """Each object's pixels set to its score, NaN on the background and on objects without a score.

    Parameters
    ----------
    labels : (H, W) int ndarray
    ids : (n,) int array_like
        Object ids.
    scores : (n,) float array_like

    Returns
    -------
    (H, W) float32 ndarray
    """
    labels = np.asarray(labels)
    ids, scores = np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)
    if ids.shape != scores.shape:
        raise ValueError(f"{ids.size} object ids but {scores.size} scores")
    found = np.full(labels.shape, np.nan, dtype=np.float32)
    if ids.size:
        position = np.searchsorted(ids, labels)
        inside = (labels > 0) & (position < ids.size)
        inside[inside] &= ids[position[inside]] == labels[inside]
        found[inside] = scores[position[inside]]
    return found


# -- tables -----------------------------------------------------------------------------------------
def write_tables(qc: QualityControl, out: str | Path, parquet: bool = True) -> dict[str, Path]:
    """``images.csv`` / ``objects.csv`` (and ``.parquet``) in ``out``: the per-image and per-object scores.

    Returns
    -------
    dict of str -> Path
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, columns in (("images", qc.image_table()), ("objects", qc.object_table())):
        paths[f"{name}.csv"] = write_csv(columns, out / f"{name}.csv")
        if parquet:
            paths[f"{name}.parquet"] = write_parquet(columns, out / f"{name}.parquet")
    return paths


def write_napari(qc: QualityControl, store: ResultStore, out: str | Path) -> list[Path]:
    """Per image, the clean labels, their feature table and a score image that napari opens (module docstring).

    Parameters
    ----------
    qc : QualityControl
    store : ResultStore
        The store ``qc`` was computed on (it holds the clean labels).
    out : path
        Files go to ``out/napari/``.

    Returns
    -------
    list of Path
    """
    import tifffile

    folder = Path(out) / "napari"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, objects in zip(qc.images, qc.objects):
        labels = store.clean_prediction(qc.model_key, image.image_key)[1]
        stem = _file_stem(image.image)
        tifffile.imwrite(folder / f"{stem}_labels.tif", labels.astype(np.uint32 if labels.max(initial=0) > 65535
                                                                         else np.uint16), compression="zlib")
        tifffile.imwrite(folder / f"{stem}_score.tif", score_image(labels, objects.ids, objects.score),
                         compression="zlib")
        features = {"index": objects.ids.tolist(), "label": objects.ids.tolist(), "score": objects.score.tolist(),
                    "stability": objects.stability.tolist(), "agreement": objects.agreement.tolist(),
                    "area": objects.area.tolist(), "centroid_y": objects.centroid_y.tolist(),
                    "centroid_x": objects.centroid_x.tolist()}
        paths += [folder / f"{stem}_labels.tif", folder / f"{stem}_score.tif",
                  write_csv(features, folder / f"{stem}_objects.csv")]
    return paths


def _file_stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -- figures ----------------------------------------------------------------------------------------
def _display(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    grey = to_grey(image) if image.ndim == 3 else image
    return np.clip(normalize_percentile(grey, 1.0, 99.8), 0, 1)


def plot_quality_image(image, labels, ids, scores, changed=None, axes=None, title: str = ""):
    """The four panels of one image: the image, the clean prediction, where the perturbed prediction
    differs, and the objects coloured by their score.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) ndarray
        The raw image (shown percentile-normalised, grey).
    labels : (H, W) int ndarray
        The chosen model's clean labels.
    ids, scores : (n,) array_like
        Object ids and scores.
    changed : ((H, W) bool, (H, W) bool), optional
        Clean and perturbed foreground; without it the third panel says that it was not computed.
    axes : sequence of 4 Axes, optional
    title : str

    Returns
    -------
    sequence of Axes
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from skimage.segmentation import find_boundaries

    if axes is None:
        axes = plt.subplots(1, 4, figsize=(15, 4.2), constrained_layout=True)[1]
    shown = _display(image)
    labels = np.asarray(labels)
    axes[0].imshow(shown, cmap="gray")
    axes[0].set_title(f"{title}: image" if title else "image")
    axes[1].imshow(shown, cmap="gray")
    axes[1].imshow(np.ma.masked_where(labels == 0, labels % 20), cmap="tab20", alpha=0.45, interpolation="nearest")
    outline = find_boundaries(labels, mode="inner")
    axes[1].imshow(np.ma.masked_where(~outline, outline), cmap=ListedColormap(["yellow"]), interpolation="nearest")
    axes[1].set_title(f"clean prediction ({np.unique(labels[labels > 0]).size} objects)")
    axes[2].imshow(shown, cmap="gray")
    if changed is not None:
        clean, perturbed = changed
        lost, gained = clean & ~perturbed, perturbed & ~clean
        axes[2].imshow(np.ma.masked_where(~lost, lost), cmap=ListedColormap(["red"]), interpolation="nearest")
        axes[2].imshow(np.ma.masked_where(~gained, gained), cmap=ListedColormap(["cyan"]), interpolation="nearest")
        axes[2].set_title(f"perturbed differs: red lost {lost.sum()} px, cyan gained {gained.sum()} px", fontsize=9)
    else:
        axes[2].set_title("perturbed prediction not computed")
    axes[3].imshow(shown, cmap="gray")
    mapped = axes[3].imshow(np.ma.masked_invalid(score_image(labels, ids, scores)), cmap="RdYlGn", vmin=0, vmax=1,
                            interpolation="nearest")
    axes[3].set_title("objects by score (red: doubtful)")
    plt.colorbar(mapped, ax=axes[3], fraction=0.046, pad=0.02, label="object score")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def plot_quality_histograms(qc: QualityControl, axes=None):
    """Histograms of the per-image and the per-object scores (every value, bins of 0.05 over [0, 1])."""
    import matplotlib.pyplot as plt

    if axes is None:
        axes = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)[1]
    bins = np.linspace(0, 1, 21)
    image_scores = qc.scores()
    object_scores = np.concatenate([o.score for o in qc.objects]) if qc.objects else np.zeros(0)
    for ax, values, what in ((axes[0], image_scores, "images"), (axes[1], object_scores, "objects")):
        ax.hist(values, bins=bins, color="C0", edgecolor="white")
        ax.set_xlabel(f"{what[:-1]} score (0: unreliable, 1: stable and agreed)")
        ax.set_ylabel(f"number of {what}")
        ax.set_xlim(0, 1)
        ax.set_title(f"{len(values)} {what}")
    axes[1].axvline(DOUBTFUL, color="C3", linestyle="--", label=f"doubtful below {DOUBTFUL}")
    axes[1].legend(loc="upper left")
    return axes


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the HTML report --------------------------------------------------------------------------------
_STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; } td, th { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.flag { color: #a00; } .box { background: #f7f7f0; border: 1px solid #dd9; padding: 0.6em 1em; }
img { max-width: 100%; }
"""


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _meaning(qc: QualityControl) -> str:
    settings = ", ".join(s.perturbation.label for s in qc.settings)
    compared = ", ".join(qc.compared_with) if qc.compared_with else "no other model"
    return f"""
<div class="box">
<p><b>What the scores measure.</b> Both are label-free and lie between 0 and 1 (higher: more reliable).</p>
<ul>
<li><b>Object score</b> = <i>stability</i> &times; <i>agreement</i>. Stability: how much of the object survives when
the image is perturbed ({html.escape(settings)}): the best overlap (IoU) of the object with an object of the perturbed
prediction, 0 if it vanishes, 1 if it keeps every pixel, about 0.5 if it splits in two. Agreement: its best overlap
with an object of each other model of the bank, averaged ({html.escape(compared)}).</li>
<li><b>Image score</b> = the model's consistency on the image under the perturbation &times; its agreement with the
other models (object F1 at IoU 0.5, averaged over them), and 0 where the image's prediction looks degenerate (the
guards' checks: floods the image, is one region, is empty where the others find objects, or has far more or fewer
objects than they do).</li>
</ul>
<p><b>What they do not mean.</b> A score says how stable the prediction is and how much the bank agrees with it,
not whether it is right: an error that every model makes the same way (touching nuclei merged by all of them, a bank
trained on the same data) scores high. A low score marks an image or an object to look at, not a proven error.
Small objects lose more overlap per pixel, so their scores are noisier. Judge the scores on a few images you know
before you trust them on your own.</p>
</div>"""


def write_report(qc: QualityControl, store: ResultStore, images: Mapping[str, np.ndarray], out: str | Path,
                 perturbed: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None, worst: int = 8,
                 judgement=None) -> Path:
    """Write ``out/report.html``, a self-contained quality-control report (module docstring).

    Parameters
    ----------
    qc : QualityControl
    store : ResultStore
        The store ``qc`` was computed on (the clean labels).
    images : mapping of image name -> raw image
        At least the ``worst`` least reliable images.
    out : path
        Folder of the report.
    perturbed : mapping of image name -> (clean, perturbed) foreground, optional
        From :func:`cte_kit.runs.quality.perturbed_foregrounds` for the images shown.
    worst : int
        How many of the least reliable images are shown as overlays.
    judgement : QualityJudgement, optional
        With labels (:func:`cte_kit.evaluation.quality.judge_quality`): a section on how well the scores
        told bad from good on this target.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ranked = qc.ranked()
    objects = {o.image: o for o in qc.objects}
    n_objects = sum(o.ids.size for o in qc.objects)
    n_doubtful = sum(image.n_doubtful for image in qc.images)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Quality control: "
             f"{html.escape(qc.model)} on {html.escape(qc.target)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>Can I trust this segmentation? {html.escape(qc.model)} on {html.escape(qc.target)}</h1>",
             f"<p>{len(qc.images)} images, {n_objects} objects, {n_doubtful} of them doubtful (score below {DOUBTFUL}). "
             f"Median image score {_number(float(np.median(qc.scores())) if qc.images else float('nan'))}. "
             "No label was used to compute any score.</p>"]
    if qc.guards is not None and qc.guards.flags:
        parts.append("<p class='flag'><b>The guards flag this model on the whole target:</b> "
                     + html.escape("; ".join(flag.reason for flag in qc.guards.flags))
                     + ". Its scores below are still computed, but the model itself looks unusable here.</p>")
    if qc.left_out:
        parts.append("<p>Not compared with: " + html.escape("; ".join(f"{k} ({v})" for k, v in qc.left_out.items()))
                     + ".</p>")
    if qc.failures:
        parts.append("<p class='flag'>Failures: " + html.escape("; ".join(f"{f.model}: {f.error}" for f in qc.failures))
                     + "</p>")
    parts.append(_meaning(qc))
    figure = plt.figure(figsize=(11, 3.6), constrained_layout=True)
    plot_quality_histograms(qc, figure.subplots(1, 2))
    parts.append(f"<h2>Scores</h2><img alt='histograms of the image and object scores' src='{_png(figure)}'>")
    if judgement is not None:
        parts.append(_judgement_section(judgement))
    parts.append(f"<h2>The {min(worst, len(ranked))} least reliable images</h2>")
    for image in ranked[:worst]:
        labels = store.clean_prediction(qc.model_key, image.image_key)[1]
        figure = plt.figure(figsize=(15, 4.2), constrained_layout=True)
        found = objects[image.image]
        plot_quality_image(images[image.image], labels, found.ids, found.score,
                           None if perturbed is None else perturbed.get(image.image), figure.subplots(1, 4),
                           title=image.image)
        flags = f" <span class='flag'>{html.escape('; '.join(image.flags))}</span>" if image.flags else ""
        parts.append(f"<h3>{html.escape(image.image)}: score {_number(image.score)} (consistency "
                     f"{_number(image.consistency)}, agreement {_number(image.agreement)}), {image.n_doubtful} of "
                     f"{image.n_objects} objects doubtful{flags}</h3><img alt='{html.escape(image.image)}' "
                     f"src='{_png(figure)}'>")
    parts.append("<h2>Every image, least reliable first</h2>" + _table(qc.image_table()))
    parts.append("<h2>Files</h2><p><code>images.csv</code>, <code>objects.csv</code> (and Parquet): the scores. "
                 "<code>napari/</code>: per image the labels (<code>_labels.tif</code>), their feature table "
                 "(<code>_objects.csv</code>, its <code>index</code> column is the label) and a score image "
                 "(<code>_score.tif</code>); open them in napari with <code>viewer.add_labels(labels, "
                 "features=pandas.read_csv(...))</code>.</p></body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _judgement_section(judgement) -> str:
    return (f"<h2>Judged with labels</h2><p>Labels were given: on this target the image score's Spearman correlation "
            f"with the true F1 is {_number(judgement.spearman_f1, 2)} and with the true AP "
            f"{_number(judgement.spearman_map, 2)} ({judgement.n_images} images); the object score tells objects that "
            f"match a true object (IoU &ge; 0.5) from those that do not with AUROC {_number(judgement.auroc, 2)} "
            f"(stability alone {_number(judgement.auroc_stability, 2)}, agreement alone "
            f"{_number(judgement.auroc_agreement, 2)}; {judgement.n_matched} of {judgement.n_objects} objects "
            "match). 0.5 is chance, 1 perfect.</p>")


def _table(columns: Mapping[str, Sequence]) -> str:
    header = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    rows = []
    for row in zip(*columns.values()):
        cells = "".join(f"<td class='num'>{_number(v)}</td>" if isinstance(v, (int, float)) else
                        f"<td>{html.escape(str(v))}</td>" for v in row)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"
