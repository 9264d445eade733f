"""The human-readable `shiftwatch check` report (the HTML one is operations/html_report.py)."""

from __future__ import annotations

import os
from pathlib import Path


def headline(report: dict) -> str:
    """The one line an operator reads first: page or not, the estimated accuracy beside the
    reference's, and the loss with its 90 % interval."""
    est = report["estimate"]
    low, high = est["loss_interval_points"]
    answer = (
        "PAGE: the model is hurt"
        if report["page"] == "PAGE"
        else "HURT, not paged yet"
        if report["harmful"]
        else "ok: the model is not hurt"
    )
    if report["harmful"] and "confirmation" in report:
        before = report["confirmation"]["previous_harmful"]
        answer += (
            " (confirmed: the previous batch was hurt too)"
            if before
            else f" ({'no previous report' if before is None else 'the previous batch was not hurt'}; "
            "a second hurt batch in a row pages)"
        )
    return (
        f"{answer}: estimated accuracy {est['accuracy']:.2f} vs {est['reference_accuracy']:.2f} on the "
        f"reference, {_points(est['loss_points'])} lost (90 % interval {low:.1f} to {high:.1f}; "
        f"pages at {est['page_points']:g} points)"
    )


def change_line(report: dict) -> str:
    """Whether the images changed (the change verdict), in words."""
    if not report["drift"]:
        return "changed: no (no detector alarms)"
    return "changed: yes: " + "; ".join(report.get("change_words") or report["alerting"])


def format_report(report: dict) -> str:
    """The human report: the page and the estimate first, then what changed and what to do,
    then the detectors, the estimated class mix and the wall time."""
    from shiftwatch.operations.page import advice

    batch, shift, acc = report["batch"], report["label_shift"], report["accuracy"]
    top = [headline(report), change_line(report)] + [f"do: {step}" for step in advice(report)] + [""]
    focus = shift["focus_class"]
    sizes = batch["input_sizes"]
    origin = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else "")
    lines = [
        *top,
        f"batch      {batch['path']}: {batch['images']} images "
        f"({origin}{', resized to 28x28' if batch['resized'] else ''}"
        f"{_ignored(batch)}) vs {report['reference']['images']} reference images",
        f"model      {_shown(report['model'])} (md5 {report.get('model_md5', '?')[:12]}, the reference's)",
        "",
        f"{'detector':<17} {'statistic':>10} {'p-value':>10} {'Holm p':>10}",
    ]
    for name, test in report["tests"].items():
        flag = "ALERT" if name in report["alerting"] else "ok"
        lines.append(
            f"{name:<17} {test['statistic']:>10.4f} {_p(test['pvalue'])} {_p(test['adjusted_pvalue'])}  {flag}"
        )
    for name, test in report.get("diagnostics", {}).items():
        lines.append(
            f"{name:<17} {test['statistic']:>10.4f} {_p(test['pvalue'])} {'':>10}  "
            f"(diagnostic, {'p < alpha' if test['pvalue'] < report['alpha'] else 'p >= alpha'})"
        )
    verdict = (
        f"changed: shift detected by {', '.join(report['alerting'])}"
        if report["drift"]
        else "unchanged: no shift detected"
    )
    lines += [
        f"change     {verdict} (Holm over {len(report['tests'])} detectors, alpha {report['alpha']})",
        "",
        f"{'class mix (estimated)':<24} {'BBSE':>6} {'EM':>6} {'reference':>9}",
    ]
    for k, name in enumerate(shift["class_names"]):
        mark = "*" if k == focus else " "
        lines.append(
            f"{mark} {k} {name:<20} {shift['bbse'][k]:>6.3f} {shift['em'][k]:>6.3f} "
            f"{shift['reference'][k]:>9.3f}{'  <- focus (shift.label_class)' if k == focus else ''}"
        )
    lines += [
        f"class mix  {class_mix_trust(report)} (BBSE vs EM total variation {shift['tv_bbse_em']:.3f}, "
        f"tolerance {report['params']['monitor.trust_tolerance']})",
        f"accuracy   estimated {acc['atc']:.3f} (ATC), {acc['average_confidence']:.3f} (average confidence)",
        f"time       {report['seconds']['total']:.2f} s (imports {report['seconds']['imports']:.2f}, "
        f"forward pass {report['seconds']['predict']:.2f}, detectors {report['seconds']['detectors']:.2f})",
    ]
    return "\n".join(lines)


def class_mix_trust(report: dict) -> str:
    """Whether to trust the class-mix estimate, in plain words; a batch with no detected
    change is not shown as suspect."""
    from shiftwatch.operations.page import why_untrustworthy

    if not report["label_shift"]["untrustworthy"]:
        return "estimate trustworthy"
    if not report["drift"]:
        return "estimate uncertain on this batch, but nothing changed: nothing to correct"
    return f"estimate untrustworthy: {why_untrustworthy(report)}; do not correct the priors with it"


def _points(value: float) -> str:
    return f"{value:.1f} point" + ("" if abs(value) == 1 else "s")


def _p(value: float) -> str:
    return f"{value:>10.4f}" if value >= 1e-4 else f"{value:>10.1e}"


def _ignored(batch: dict) -> str:
    ignored = batch.get("files_ignored", 0)
    return f", {ignored} other files ignored" if ignored else ""


def _shown(path: str) -> str:
    """A path under the working directory relative to it (what the user would type)."""
    try:
        return os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd().resolve()) else path
    except (OSError, ValueError):  # a models:/ URI, another drive
        return path
