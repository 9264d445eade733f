"""The human-readable `shiftwatch check` report (the HTML one is html_report.py)."""
from __future__ import annotations

import os
from pathlib import Path


def format_report(report: dict) -> str:
    """The human report: detectors, verdict, estimated class mix and accuracy, wall time."""
    batch, shift, acc = report["batch"], report["label_shift"], report["accuracy"]
    focus = shift["focus_class"]
    sizes = batch["input_sizes"]
    origin = ", ".join(sizes[:3]) + (f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else "")
    lines = [f"batch      {batch['path']}: {batch['images']} images "
             f"({origin}{', resized to 28x28' if batch['resized'] else ''}"
             f"{_ignored(batch)}) vs {report['reference']['images']} reference images",
             f"model      {_shown(report['model'])} (md5 {report.get('model_md5', '?')[:12]}, the reference's)",
             "",
             f"{'detector':<17} {'statistic':>10} {'p-value':>10} {'Holm p':>10}"]
    for name, test in report["tests"].items():
        flag = "ALERT" if name in report["alerting"] else "ok"
        lines.append(f"{name:<17} {test['statistic']:>10.4f} {_p(test['pvalue'])} "
                     f"{_p(test['adjusted_pvalue'])}  {flag}")
    for name, test in report.get("diagnostics", {}).items():
        lines.append(f"{name:<17} {test['statistic']:>10.4f} {_p(test['pvalue'])} {'':>10}  "
                     f"(diagnostic, {'p < alpha' if test['pvalue'] < report['alpha'] else 'p >= alpha'})")
    verdict = (f"ALERT: shift detected by {', '.join(report['alerting'])}" if report["drift"]
               else "ok: no shift detected")
    lines += [f"verdict    {verdict} (Holm over {len(report['tests'])} detectors, "
              f"alpha {report['alpha']})", "",
              f"{'class mix (estimated)':<24} {'BBSE':>6} {'EM':>6} {'reference':>9}"]
    for k, name in enumerate(shift["class_names"]):
        mark = "*" if k == focus else " "
        lines.append(f"{mark} {k} {name:<20} {shift['bbse'][k]:>6.3f} {shift['em'][k]:>6.3f} "
                     f"{shift['reference'][k]:>9.3f}{'  <- focus (shift.label_class)' if k == focus else ''}")
    trust = ("UNTRUSTWORTHY" + (" (BBSE needs negative weights)" if shift["bbse_negative_weights"] else "")
             if shift["untrustworthy"] else "trustworthy")
    lines += [f"estimate   {trust}: BBSE vs EM total variation {shift['tv_bbse_em']:.3f} "
              f"(tolerance {report['params']['monitor.trust_tolerance']})",
              f"accuracy   estimated {acc['atc']:.3f} (ATC), {acc['average_confidence']:.3f} "
              f"(average confidence)",
              f"time       {report['seconds']['total']:.2f} s (imports {report['seconds']['imports']:.2f}, "
              f"forward pass {report['seconds']['predict']:.2f}, detectors {report['seconds']['detectors']:.2f})"]
    return "\n".join(lines)


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
