"""`shiftwatch check --html`: one self-contained HTML file an operator can open anywhere.

Verdict first, then per-detector p-values before and after Holm, the batch's mean-pixel and
confidence histograms over the reference's, the estimated class mix beside the reference's
with the trust flag, the label-free accuracy estimate, and a grid of the batch's images.
Figures are PNGs embedded as data: URIs and the style is inline, so the file needs no network
and no other file to render.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_GRID = 48  # images shown: the first ones of the batch, in its order


@dataclass(frozen=True)
class Views:
    """Per-image numbers the report draws (the report dict holds only summaries)."""

    batch_mean_pixel: np.ndarray
    batch_confidence: np.ndarray
    reference_mean_pixel: np.ndarray
    reference_confidence: np.ndarray
    sample_images: np.ndarray


def figures(views: Views) -> dict[str, bytes]:
    """PNG bytes by name: the two histograms and the sample grid (also logged to MLflow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    for name, batch, reference, label in (
        ("mean_pixel", views.batch_mean_pixel, views.reference_mean_pixel, "mean pixel intensity"),
        ("confidence", views.batch_confidence, views.reference_confidence, "model confidence (max softmax)"),
    ):
        fig, ax = plt.subplots(figsize=(5, 3))
        bins = np.linspace(0, 1, 41).tolist()  # a list: matplotlib's type stubs take no arrays
        ax.hist(reference, bins=bins, density=True, alpha=0.5, label=f"reference ({len(reference):,})")
        ax.hist(batch, bins=bins, density=True, alpha=0.5, label=f"batch ({len(batch):,})")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out[name] = _png(fig)
        plt.close(fig)
    images = views.sample_images[:SAMPLE_GRID]
    columns = 12
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image in zip(axes.flat, images):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    fig.tight_layout(pad=0.1)
    out["samples"] = _png(fig)
    plt.close(fig)
    return out


def render(report: dict, pictures: dict[str, bytes]) -> str:
    """The HTML document for a `check` report and its figures."""
    from shiftwatch.operations.page import advice
    from shiftwatch.operations.text_report import change_line, class_mix_trust, headline

    alert = bool(report["harmful"])  # the banner is the page; the change is the line below it
    shift, accuracy, batch = report["label_shift"], report["accuracy"], report["batch"]
    verdict = headline(report)
    steps = "".join(f"<li>{_e(step)}</li>" for step in advice(report))
    todo = f'<h3>What to do</h3><ol id="advice">{steps}</ol>' if steps else ""
    tests = "".join(
        f"<tr class='{'alert' if name in report['alerting'] else ''}'><td>{_e(name)}</td>"
        f"<td>{test['statistic']:.4f}</td><td>{_p(test['pvalue'])}</td><td>{_p(test['adjusted_pvalue'])}</td>"
        f"<td>{'ALERT' if name in report['alerting'] else 'ok'}</td></tr>"
        for name, test in report["tests"].items()
    )
    tests += "".join(  # diagnostics: own p-value, not in the verdict
        f"<tr class='diagnostic'><td>{_e(name)}</td><td>{test['statistic']:.4f}</td><td>{_p(test['pvalue'])}</td>"
        f"<td></td><td>diagnostic</td></tr>"
        for name, test in report.get("diagnostics", {}).items()
    )
    focus = shift["focus_class"]
    mix = "".join(
        f"<tr class='{'focus' if k == focus else ''}'><td>{k} {_e(name)}</td><td>{shift['bbse'][k]:.3f}</td>"
        f"<td>{shift['em'][k]:.3f}</td><td>{shift['reference'][k]:.3f}</td></tr>"
        for k, name in enumerate(shift["class_names"])
    )
    trust = class_mix_trust(report)  # in plain words, with the reason
    low, high = shift.get(f"class_{focus}_share_bbse_interval", (None, None))
    interval = f" (95 % bootstrap interval {low:.3f}–{high:.3f})" if low is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>shiftwatch check: {_e(report["page"])} — {_e(Path(batch["path"]).name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; color: #222; }}
.verdict {{ font-size: 1.6em; padding: 0.6em 1em; border-radius: 6px; color: white;
           background: {"#b3261e" if alert else "#1e7b34"}; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.8em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
tr.alert td {{ color: #b3261e; font-weight: bold; }} tr.focus td {{ background: #fff5d6; }}
img {{ max-width: 100%; }} .muted {{ color: #666; font-size: 0.9em; }}
</style></head><body>
<div class="verdict" id="verdict">{_e(verdict)}</div>
<p id="change"><b>{_e(change_line(report))}</b></p>
{todo}
<p class="muted">{batch["images"]:,} images from {_e(batch["path"])} against {report["reference"]["images"]:,}
reference images; Holm over {len(report["tests"])} detectors at alpha {report["alpha"]};
model {_e(report["model"])}.</p>
<h2>Change detectors (information: a change is not harm)</h2>
<table id="tests"><tr><th>detector</th><th>statistic</th><th>p-value</th><th>Holm-adjusted</th><th></th></tr>
{tests}</table>
<h2>What the batch looks like next to the reference</h2>
{img_tag(pictures["mean_pixel"], "mean_pixel", "mean-pixel histogram")}
{img_tag(pictures["confidence"], "confidence", "confidence histogram")}
<h2>Estimated class mix</h2>
<p>Class-mix <b id="trust">{_e(trust)}</b> (BBSE vs EM total variation {shift["tv_bbse_em"]:.3f};
class {focus} share by BBSE {shift[f"class_{focus}_share_bbse"]:.3f}{interval}).</p>
<table id="mix"><tr><th>class</th><th>BBSE</th><th>EM</th><th>reference</th></tr>{mix}</table>
<h2>Accuracy without labels</h2>
<p id="accuracy">Estimated accuracy {report["estimate"]["accuracy"]:.3f} (90 % interval
{report["estimate"]["interval"][0]:.3f}–{report["estimate"]["interval"][1]:.3f}; the page's estimate, stage harm);
for comparison {accuracy["atc"]:.3f} (ATC) and {accuracy["average_confidence"]:.3f} (average confidence),
which over-estimate accuracy under covariate shift.</p>
<h2>Sample images (first {min(SAMPLE_GRID, batch["images"])})</h2>
{img_tag(pictures["samples"], "samples", "sample images")}
</body></html>
"""


def write(path: str | Path, report: dict, views: Views) -> dict[str, bytes]:
    """Write the HTML file atomically; returns the figures (for MLflow)."""
    from shiftwatch.core.io import atomic_path

    pictures = figures(views)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(render(report, pictures), encoding="utf-8")
    return pictures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def img_tag(png: bytes, element_id: str, alt: str) -> str:
    """An <img> with the PNG embedded as a data: URI (the page needs no other file)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img id="{element_id}" alt="{alt}" src="data:image/png;base64,{data}">'


def _p(value: float) -> str:
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _e(text: object) -> str:
    return html.escape(str(text))
