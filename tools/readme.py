"""Refresh the generated tables in README.md and docs/*.md from metrics/*.json and benchmarks/.

`python tools/readme.py` (`make readme`) rewrites what lies between each
`<!-- NAME:begin -->` / `<!-- NAME:end -->` pair in README.md and every docs/*.md page (or in
the files named on the command line), so the numbers in the README and the docs are always
those of the last real run, never typed by hand. Each NAME lives in exactly one file
(tests/test_readme.py checks it).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

from shiftwatch import DEPLOYMENT_SETS as SETS
from shiftwatch.data.corruptions import FAMILIES
from shiftwatch.detection.registry import DETECTORS
from shiftwatch.detection.verdict import FEATURE_DETECTORS

# The study's published numbers (from the project brief); None where it gave none.
STUDY = {"accuracy_train": 0.9075, "kl_identical": 1.46}


def _focus() -> int:
    """The class the label shift thins out (params.yaml's shift.label_class): every table's
    class-k columns follow it."""
    import yaml

    return int(yaml.safe_load(Path("params.yaml").read_text())["shift"]["label_class"])


def _class_name(k: int) -> str:
    from shiftwatch import CLASS_NAMES

    return CLASS_NAMES[k].lower()


def _generated(path: str) -> dict | None:
    """The JSON a tool or benchmark wrote, or None if it has not run yet."""
    return _load(path) if Path(path).exists() else None


def _load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value != 0 and abs(value) < 10**-digits:
        return f"{value:.1e}"
    return f"{value:.{digits}f}"


def _p(value: float | None) -> str:
    """A p-value; exactly 0 means it underflowed double precision."""
    return "< 1e-300" if value == 0 else _num(value)


def detection_table() -> str:
    detect = _load("metrics/detect_details.json")
    rows = [
        "| A vs | KS statistic | KS p-value | KL(A‖B), nats | domain-classifier AUC | AUC p-value | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        d = detect[name]
        alerts = [
            k
            for k, flag in (("KS", d["drift_ks"]), ("KL", d["drift_kl"]), ("AUC", d["drift_domain_classifier"]))
            if flag
        ]
        verdict = f"**drift** ({', '.join(alerts)})" if alerts else "no drift"
        rows.append(
            f"| {name} | {_num(d['ks_statistic'], 4)} | {_p(d['ks_pvalue'])} | "
            f"{_num(d['kl_divergence'], 4)} | {_num(d['domain_auc'])} | "
            f"{_p(d['domain_auc_pvalue'])} | {verdict} |"
        )
    return "\n".join(rows)


def accuracy_table() -> str:
    evaluate = _load("metrics/evaluate_details.json")
    focus = _focus()
    rows = [
        f"| evaluated on | images | accuracy | class {focus} ({_class_name(focus)}) precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    counts = {**_load("metrics/prepare.json")["n"], **{name: v["n"] for name, v in _load("metrics/shift.json").items()}}
    rows.append(
        f'| domain A, its own training images (the study\'s "in-domain") | '
        f"{counts['domain_a']:,} | {_num(evaluate['domain_a_train']['accuracy'], 4)} | | | |"
    )
    for name, label in (("test", "held-out test set (honest in-domain)"), *((s, s) for s in SETS)):
        c = evaluate[name][f"class_{focus}"]
        rows.append(
            f"| {label} | {counts[name]:,} | {_num(evaluate[name]['accuracy'], 4)} | {_num(c['precision'])} | "
            f"{_num(c['recall'])} | {_num(c['f1'])} |"
        )
    return "\n".join(rows)


def study_table() -> str:
    evaluate, detect = _load("metrics/evaluate_details.json"), _load("metrics/detect_details.json")
    return "\n".join(
        [
            "| quantity | the study | shiftwatch |",
            "|---|---|---|",
            f"| accuracy on the training images of A | {STUDY['accuracy_train']} | "
            f"{_num(evaluate['domain_a_train']['accuracy'], 4)} |",
            f"| in-domain accuracy on images the model never saw | not measured | "
            f"{_num(evaluate['test']['accuracy'], 4)} |",
            f"| KL between two samples of one distribution | {STUDY['kl_identical']} (densities summed) | "
            f"{_num(detect['b_raw']['kl_divergence'], 4)} (A vs B_raw, probability masses) |",
        ]
    )


def benchmark_table() -> str:
    b = _generated("benchmarks/results.json")
    if b is None:
        return "_no benchmark run yet: `make bench`_"
    rows = ["| measurement | value | target |", "|---|---|---|"]
    if "full_repro_seconds" in b:
        full = b["full_repro_seconds"]
        rows += [
            f"| full `dvc repro`, defaults, fresh copy | {full:.0f} s | |",
            f"| `dvc exp run -S shift.brightness=0.2` after it | {b['exp_run_seconds']:.0f} s "
            f"({100 * b['exp_run_share']:.1f} % of the full run) | ≤ 10 % |",
            f"| queued sweep of {len(b['sweep_values'])} (`dvc exp run --queue` ×{len(b['sweep_values'])}, "
            f"`dvc queue start`, wait) | {b['sweep_seconds']:.0f} s ({100 * b['sweep_share']:.1f} %) | ≤ 40 % |",
            f"| `dvc exp show` columns (params, metrics, dependency hashes) | {b['exp_show_columns']} | |",
        ]
    if "training_images_per_second" in b:
        rates = b["training_images_per_second"]
        seed = next(iter(rates.values()))
        for name, rate in rates.items():
            rows.append(
                f"| training, {name} | {rate:.0f} images/s ({rate / seed:.2f}x) | "
                f"{'≥ 1.7x' if 'precision: auto' in name else ''} |"
            )
        for dtype, rate in b["inference_images_per_second"].items():
            rows.append(f"| inference, {dtype}, batch 1,000 | {rate:,.0f} images/s | |")
        rows.append(
            f"| rounds | median of {b['training_rounds']} interleaved rounds of "
            f"{b['training_steps']} batches of {b['training_batch_size']} after "
            f"{b.get('training_warmup_steps', 0)} untimed warm-up batches | |"
        )
    rows.append(f"| machine | {b['machine']} | |")
    return "\n".join(rows)


def stage_table() -> str:
    b = _generated("benchmarks/results.json") or {}
    if "stage_seconds" not in b:
        return "_no benchmark run yet: `make bench`_"
    stages, full = b["stage_seconds"], b["full_repro_seconds"]
    rows = ["| stage | seconds | share of the full run |", "|---|---|---|"]
    rows += [f"| `{name}` | {sec:.0f} | {100 * sec / full:.0f} % |" for name, sec in stages.items()]
    rest = full - sum(stages.values())
    rows.append(f"| DVC and process start-up (hashing, locks, imports) | {rest:.0f} | {100 * rest / full:.0f} % |")
    rows.append(f"| **total** | **{full:.0f}** | 100 % |")
    return "\n".join(rows)


def exp_show_table() -> str:
    path = Path("benchmarks/exp_show.md")
    return path.read_text().rstrip() if path.exists() else "_run `make bench`_"


def monitor_table() -> str:
    monitor = _load("metrics/monitor_details.json")
    detectors = list(monitor["b_raw"]["tests"])
    rows = ["| test set vs | " + " | ".join(detectors) + " | Holm verdict |", "|---|" + "---|" * (len(detectors) + 1)]
    diagnostics = list(monitor["b_raw"].get("diagnostics", {}))
    rows[0] += "".join(f" {d} (diagnostic) |" for d in diagnostics)
    rows[1] += "---|" * len(diagnostics)
    for name in SETS:
        tests, extra = monitor[name]["tests"], monitor[name].get("diagnostics", {})
        rows.append(
            f"| {name} | "
            + " | ".join(_p(tests[d]["pvalue"]) for d in detectors)
            + f" | {'**drift**' if monitor[name]['drift'] else 'no drift'} |"
            + "".join(f" {_p(extra[d]['pvalue'])} |" for d in diagnostics)
        )
    return "\n".join(rows) + (
        "\n\n(cells: p-values before the Holm correction; the verdict is Holm "
        "over the detectors left of it, the diagnostics are not in it)"
    )


def estimates_table() -> str:
    monitor = _load("metrics/monitor_details.json")
    focus = _focus()
    rows = [
        f"| set | class-{focus} share: true | BBSE (95 % bootstrap interval) | EM (converged?) | trust flag | "
        "accuracy: true | ATC | avg. confidence |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        shift, accuracy = monitor[name]["label_shift"], monitor[name]["accuracy"]
        flag = "untrustworthy" if shift["untrustworthy"] else "ok"
        low, high = shift.get(f"class_{focus}_share_bbse_interval", (None, None))
        interval = f" ({_num(low)}–{_num(high)})" if low is not None else ""
        converged = {1: f" (yes, {shift.get('em_iterations')} it.)", 0: " (**no**)"}.get(shift.get("em_converged"), "")
        rows.append(
            f"| {name} | {_num(shift[f'class_{focus}_share_true'])} | "
            f"{_num(shift[f'class_{focus}_share_bbse'])}{interval} | "
            f"{_num(shift[f'class_{focus}_share_em'])}{converged} | {flag} | {_num(accuracy['true'])} | "
            f"{_num(accuracy['atc'])} | {_num(accuracy['average_confidence'])} |"
        )
    return "\n".join(rows)


def _rate_table(streams: dict, upper_bound: bool = False) -> str:
    """Rates per stream x detector x n. `upper_bound` adds the upper end of the 95 % Wilson
    interval; a cell with fewer repetitions than the most any cell got says how many."""
    sizes = sorted({int(n) for by_detector in streams.values() for points in by_detector.values() for n in points})
    most = max(
        p.get("repetitions", 0)
        for by_detector in streams.values()
        for points in by_detector.values()
        for p in points.values()
    )
    rows = ["| stream | detector | " + " | ".join(f"n={n:,}" for n in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for stream, by_detector in streams.items():
        for detector, points in by_detector.items():
            cells = []
            for n in sizes:
                p = points.get(str(n))
                if p is None:
                    cells.append("—")
                    continue
                notes = [f"≤{p['ci_high']:.2f}"] if upper_bound else []
                if p.get("repetitions", most) < most:
                    notes.append(f"R={p['repetitions']}")
                cell = f"{p['rate']:.2f}" + (f" ({', '.join(notes)})" if notes else "")
                if p.get("miscalibrated"):
                    cell = f"**{cell}** ✗"
                cells.append(cell)
            name = f"**{detector}**" if detector == "combined" else detector
            rows.append(f"| {stream} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def false_alarm_table() -> str:
    return _rate_table(_load("metrics/power_details.json")["false_alarms"], upper_bound=True)


def power_table() -> str:
    details = _load("metrics/power_details.json")
    return _rate_table({s: by for s, by in details["detection"].items() if _family(s) not in FAMILIES})


def monitored_table() -> str:
    """The verdict as monitor/check run it (a reference of the test set's size): the null
    with the upper end of its Wilson interval, then the label-shift streams."""
    monitored = _load("metrics/power_details.json").get("as_monitored")
    if not monitored or not monitored["false_alarms"]:
        return "_power.monitored_reference is off_"
    return _rate_table(monitored["false_alarms"], upper_bound=True) + "\n\n" + _rate_table(monitored["detection"])


def timeline_table() -> str:
    """First alert per detector on the drifting stream of tools/drift_stream.py."""
    timeline = _generated("metrics/timeline.json")
    if timeline is None:
        return "_run `python tools/drift_stream.py`_"
    brightness = timeline["brightness"]
    rows = ["| detector | first alerting batch | its brightness offset |", "|---|---|---|"]
    for name, first in timeline["first_alerts"].items():
        label = "**verdict**" if name == "verdict" else name
        cell = ("never", "—") if first is None else (str(first["index"]), f"+{brightness[first['index']]:.4f}")
        rows.append(f"| {label} | {cell[0]} | {cell[1]} |")
    return "\n".join(rows) + (
        f"\n\n({len(timeline['points'])} batches of {timeline['images_per_batch']} "
        "images; an alert is a Holm-adjusted p-value below alpha)"
    )


def check_bench_table() -> str:
    """benchmarks/check.json: check's wall time, local vs through `shiftwatch serve`."""
    bench = _generated("benchmarks/check.json")
    if bench is None:
        return "_run `python benchmarks/bench_check.py`_"
    rows = [
        "| images | `shiftwatch check` (cold start: torch, model) | `shiftwatch check --server` | same verdict? |",
        "|---|---|---|---|",
    ]
    by = {(c["images"], c["mode"]): c for c in bench["cases"]}
    for images in sorted({c["images"] for c in bench["cases"]}):
        local, server = by[(images, "local")], by[(images, "server")]
        runs = f" (median of {local['runs']})" if local["runs"] > 1 else ""
        same = server.get("same_as_local", {})
        rows.append(
            f"| {images:,} | {local['seconds']:.2f} s = {local['ms_per_image']:.3f} ms/image{runs} | "
            f"{server['seconds']:.2f} s = {server['ms_per_image']:.3f} ms/image | "
            f"{'yes' if same.get('verdict') else 'no'}, p-values within {same.get('max_pvalue_gap', 0):.1g} |"
        )
    return "\n".join(rows) + f"\n\n(target: ≤ {bench['target_seconds_1000']:g} s for 1,000 images)"


def harm_table() -> str:
    """Every shifted stream: the accuracy it costs, the verdict's power at harm_n (Wilson
    interval) and the best single detector there; harmful ones must reach the target."""
    details = _load("metrics/power_details.json")
    harm = details.get("harm")
    if harm is None:
        return "_run `dvc repro power`_"
    n = str(harm["n"])
    monitored = harm.get("as_monitored")
    reference = details.get("as_monitored", {}).get("reference_images")
    rows = [
        f"| shift | accuracy lost (points) | verdict alarms at n={harm['n']} (95 % interval) | "
        f"best single detector there | harmful (≥ {harm['points']:g} points)? | target met? |"
        + (f" as monitored ({reference:,}-image reference) |" if monitored else ""),
        "|---|---|---|---|---|---|" + ("---|" if monitored else ""),
    ]
    for stream, loss in sorted(details["accuracy_loss_points"].items(), key=lambda kv: (_family(kv[0]), kv[1])):
        by_detector = details["detection"][stream]
        verdict = by_detector["combined"].get(n)
        if verdict is None:
            continue
        best = max((d for d in by_detector if d in FEATURE_DETECTORS), key=lambda d: by_detector[d][n]["rate"])
        harmful = stream in harm["harmful"]
        met = "—" if not harmful else ("✓" if verdict["rate"] >= harm["target_power"] else "**✗ missed**")
        name = f"**{stream}** (weakest)" if stream == harm["weakest"] else stream
        interval = f"{verdict['ci_low']:.2f}–{verdict['ci_high']:.2f}"
        rows.append(
            f"| {name} | {loss:.1f} | {verdict['rate']:.2f} ({interval}) | "
            f"{best} {by_detector[best][n]['rate']:.2f} | {'yes' if harmful else 'no'} | {met} |"
            + (f" {_monitored_cell(details, stream, n, harm)} |" if monitored else "")
        )
    rows += [
        "",
        f"{len(harm['harmful'])} shifts cost ≥ {harm['points']:g} accuracy points; the verdict "
        f"detects {_detected(harm)} of them in ≥ {harm['target_power']:.0%} of draws at n = {harm['n']}"
        + _misses(harm),
    ]
    if monitored:
        rows += [
            "",
            f"As monitored (each draw of n = {harm['n']} against a fresh {reference:,}-image reference), "
            f"the verdict detects {_detected(monitored)} of the {len(monitored['harmful'])} in "
            f"≥ {harm['target_power']:.0%} of draws" + _misses(monitored),
        ]
    return "\n".join(rows)


def page_table() -> str:
    """Stage harm, every cell: the accuracy it costs, the estimate (population, by a fit that
    never saw the family) and its error, and at each judged n the change verdict's rate and the
    page rate on the same draws; the weakest harmful and harmless rows in bold."""
    details = _generated("metrics/harm_details.json")
    if details is None:
        return "_run `dvc repro harm`_"
    cells = details["cells"]
    sizes = list(cells["no_shift"]["draws"])
    shown = [n for n in sizes if n != "1000"] or sizes
    harm_points = details["harm_points"]
    worst = _weakest(cells, harm_points, "200" if "200" in shown else shown[0])
    rows = [
        "| shift | group | points lost | estimated (error) | "
        + " | ".join(f"n = {n}: change / page" for n in shown)
        + " |",
        "|---|---|---|---|" + "---|" * len(shown),
    ]
    order = {"null": 0, "everyday": 1, "design": 2, "held_out": 3}
    for name, cell in sorted(cells.items(), key=lambda kv: (order[kv[1]["group"]], kv[1]["loss_points"])):
        group = {
            "design": f"design (fit without {cell['left_out']})" if cell["left_out"] else "design",
            "held_out": "held out",
            "everyday": "everyday",
            "null": "no shift",
        }[cell["group"]]
        loss, error = cell["loss_points"], cell["population_error_points"]
        label = f"**{name}** (weakest)" if name in worst else name
        rows.append(
            f"| {label} | {group} | {loss:.1f} | {loss - error:.1f} ({-error:+.1f}) | "
            + " | ".join(
                f"{_change_rate(cell['draws'][n])} / {_page_cell(cell['draws'][n], loss, harm_points)}" for n in shown
            )
            + " |"
        )
    return "\n".join(rows) + (
        "\n\n(estimated: the population loss the estimate gives the cell's 5,000 images, "
        "error = estimated minus true loss; change / page: share of draws where the change "
        "verdict alarms / the page fires, as check runs, each draw against a fresh reference of "
        f"pool images; the change verdict on the first {_change_draws(cells)} of the page's draws "
        "(more where the first ones were mixed); ✗ marks a page rate that misses its target: ≥ 0.9 where "
        f"≥ {harm_points:g} points are lost, ≤ 0.10 where < 1 point)"
    )


def _weakest(cells: dict, harm_points: float, n: str) -> set[str]:
    harmful = {k: c["draws"][n]["page_rate"] for k, c in cells.items() if c["loss_points"] >= harm_points}
    harmless = {k: c["draws"][n]["page_rate"] for k, c in cells.items() if c["loss_points"] < 1}
    weakest = set()
    if harmful:
        weakest.add(min(harmful, key=harmful.get))
    if harmless:
        weakest.add(max(harmless, key=harmless.get))
    return weakest


def _page_cell(draw: dict, loss: float, harm_points: float) -> str:
    rate = draw["page_rate"]
    missed = (loss >= harm_points and rate < 0.9) or (loss < 1 and rate > 0.10)
    return f"{rate:.2f}{' ✗' if missed else ''}"


def _change_draws(cells: dict) -> str:
    counts = {d["change_repetitions"] for c in cells.values() for d in c["draws"].values() if "change_repetitions" in d}
    return "—" if not counts else f"{min(counts)}" if len(counts) == 1 else f"{min(counts)} to {max(counts)}"


def _change_rate(draw: dict) -> str:
    return f"{draw['change_rate']:.2f}" if "change_rate" in draw else "—"


def page_targets_table() -> str:
    """Issue 20's targets against stage harm's measurements, per n judged."""
    details = _generated("metrics/harm_details.json")
    if details is None:
        return "_run `dvc repro harm`_"
    cells, harm_points = details["cells"], details["harm_points"]
    shifted = {k: c for k, c in cells.items() if k != "no_shift"}
    rows = [
        "| target | " + " | ".join(f"n = {n}" for n in cells["no_shift"]["draws"]) + " |",
        "|---|" + "---|" * len(cells["no_shift"]["draws"]),
    ]

    def row(label, values, ok):
        rows.append(f"| {label} | " + " | ".join(f"{v:.2f}{'' if ok(v) else ' ✗'}" for v in values) + " |")

    sizes = list(cells["no_shift"]["draws"])
    harmful = [k for k, c in shifted.items() if c["loss_points"] >= harm_points]
    harmless = [k for k, c in shifted.items() if c["loss_points"] < 1]
    row(
        f"page on every shift costing ≥ {harm_points:g} points ({len(harmful)} cells): lowest rate ≥ 0.9",
        [min(shifted[k]["draws"][n]["page_rate"] for k in harmful) for n in sizes],
        lambda v: v >= 0.9,
    )
    row(
        f"page on every shift costing < 1 point ({len(harmless)} cells): highest rate ≤ 0.10",
        [max(shifted[k]["draws"][n]["page_rate"] for k in harmless) for n in sizes],
        lambda v: v <= 0.10,
    )
    row("page on no shift ≤ 0.05", [cells["no_shift"]["draws"][n]["page_rate"] for n in sizes], lambda v: v <= 0.05)
    rows.append(
        "| the change verdict on the same draws (information, no target): lowest rate on a harmful "
        "cell / highest on a harmless one / on no shift | "
        + " | ".join(_change_extremes(shifted, harmful, harmless, cells["no_shift"], n) for n in sizes)
        + " |"
    )
    held_out = [c for c in shifted.values() if c["group"] == "held_out"]
    for label, judged in (("held-out cells (the target)", held_out), ("every cell", list(cells.values()))):
        if judged:
            row(
                f"interval holds the draw's own accuracy, lowest over {label} ≥ 0.9",
                [min(c["draws"][n]["coverage"] for c in judged) for n in sizes],
                lambda v: v >= 0.9,
            )
    if held_out:
        rows.append(
            f"| the same, every held-out draw pooled (information): share held / held-out cells below 0.9 "
            f"(of {len(held_out)}) | " + " | ".join(_pooled_coverage(held_out, n) for n in sizes) + " |"
        )
    for group, label in (("held_out", "held-out families"), ("design", "design families, each left out")):
        errors = sorted(abs(c["population_error_points"]) for c in shifted.values() if c["group"] == group)
        if errors:
            rows.append(
                f"| estimate's error on {label} ({len(errors)} cells), points: median ≤ 2, 90th "
                f"percentile ≤ 5, worst ≤ 10 | {np.median(errors):.1f} / {np.quantile(errors, 0.9):.1f} / "
                f"{errors[-1]:.1f} |" + " |" * (len(sizes) - 1)
            )
    return "\n".join(rows)


def _pooled_coverage(cells: list, n: str) -> str:
    draws = [c["draws"][n] for c in cells]
    held = sum(d["coverage"] * d["repetitions"] for d in draws) / sum(d["repetitions"] for d in draws)
    return f"{held:.2f} / {sum(d['coverage'] < 0.9 for d in draws)}"


def _change_extremes(shifted: dict, harmful: list, harmless: list, null: dict, n: str) -> str:
    rate = lambda cell: cell["draws"][n].get("change_rate")
    if rate(null) is None:
        return "—"
    lowest = min(rate(shifted[k]) for k in harmful) if harmful else None
    highest = max(rate(shifted[k]) for k in harmless) if harmless else None
    return " / ".join("—" if v is None else f"{v:.2f}" for v in (lowest, highest, rate(null)))


def false_pages_table() -> str:
    """False pages a week on a healthy stream of 24 batches a day, per n, from stage harm's
    no-shift draws: one page per hurt batch, and a page confirmed by the next batch."""
    details = _generated("metrics/harm_details.json")
    if details is None:
        return "_run `dvc repro harm`_"
    from shiftwatch.commands.timeline import weekly_false_pages

    rows = [
        "| n | no-shift draws | paged | false pages a week (95 % upper) | confirmed by the next batch: "
        "a week, p² (95 % upper) | confirmed pages seen |",
        "|---|---|---|---|---|---|",
    ]
    for n, judged in details["cells"]["no_shift"]["draws"].items():
        w = weekly_false_pages(judged)
        seen = "—" if w["confirmed_seen"] is None else w["confirmed_seen"]
        rows.append(
            f"| {n} | {w['draws']:,} | {round(w['page_rate'] * w['draws'])} "
            f"| {w['per_week']:.2f} ({w['per_week_upper']:.2f}) "
            f"| {w['confirmed_per_week']:.3f} ({w['confirmed_per_week_upper']:.3f}) "
            f"| {seen} of {w['draws'] - 1:,} pairs |"
        )
    return "\n".join(rows)


def survey_table() -> str:
    """Stage harm's survey: each estimator's population error (points) on the design families
    (each left out of its own fit) and on the held-out families."""
    details = _generated("metrics/harm_details.json")
    if details is None or "survey_points" not in details:
        return "_run `dvc repro harm`_"
    groups = {name: cell["group"] for name, cell in details["cells"].items()}
    rows = [
        "| estimator | design families, left out: median / 90th pct. / worst | held out: median / 90th pct. "
        "/ worst | everyday: worst |",
        "|---|---|---|---|",
    ]
    from shiftwatch.estimation.harm import SURVEY

    page_signals = tuple(details["estimator"]["signals"])
    for label, errors in details["survey_points"].items():
        cells = []
        names, weights = SURVEY.get(label, ((), ()))
        if weights is None and names == page_signals:  # fitted on the page's signals
            label += " (the page's)"
        for group in ("design", "held_out", "everyday"):
            values = np.abs([e for name, e in errors.items() if groups.get(name) == group])
            cells.append(
                f"{values.max():.1f}"
                if group == "everyday"
                else f"{np.median(values):.1f} / {np.quantile(values, 0.9):.1f} / {values.max():.1f}"
            )
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n(absolute error of the estimated accuracy, points, on each cell's 5,000 images)"


def page_sets_table() -> str:
    """monitor: the page's estimate on the pipeline's own deployment sets, beside the truth."""
    monitor = _load("metrics/monitor_details.json")
    if "page" not in monitor.get("b_raw", {}):
        return "_run `dvc repro monitor`_"
    rows = [
        "| set | accuracy: true | estimated (90 % interval) | loss: true | estimated | page | changed | ATC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        page, accuracy = monitor[name]["page"], monitor[name]["accuracy"]
        low, high = page["interval"]
        rows.append(
            f"| {name} | {_num(accuracy['true'])} | {_num(page['accuracy'])} ({_num(low)}–{_num(high)}) | "
            f"{page['true_loss_points']:.1f} | {page['loss_points']:.1f} | "
            f"{'**PAGE**' if page['harmful'] else 'no'} | {'yes' if monitor[name]['drift'] else 'no'} | "
            f"{_num(accuracy['atc'])} |"
        )
    return "\n".join(rows)


def headline_table() -> str:
    """README: each deployment set, what changed in it, the accuracy the model keeps, and what
    `monitor` says without labels (the page's estimate, the page, the change verdict)."""
    monitor = _load("metrics/monitor_details.json")
    if "page" not in monitor.get("b_raw", {}):
        return "_run `dvc repro monitor`_"
    import yaml

    shift = yaml.safe_load(Path("params.yaml").read_text())["shift"]
    counts = {**_load("metrics/prepare.json")["n"], **{name: v["n"] for name, v in _load("metrics/shift.json").items()}}
    thinned = (
        f"only {100 * shift['label_keep']:.0f} % of class {shift['label_class']} "
        f"({_class_name(shift['label_class'])}) kept"
    )
    blurred = f"28→{shift['downsample']}→28 px blur, brightness +{shift['brightness']}"
    changed = {"b_raw": "nothing", "b_covariate": blurred, "b_label": thinned, "b_shift": "both"}
    reference = _load("metrics/evaluate_details.json")["test"]["accuracy"]
    rows = [
        "| deployment set | images | what changed | accuracy | estimated without labels (90 % interval) | "
        "page | changed |",
        "|---|---|---|---|---|---|---|",
        f"| test (the reference) | {counts['test']:,} | nothing, never trained on | {_num(reference)} | | | |",
    ]
    for name in SETS:
        page = monitor[name]["page"]
        low, high = page["interval"]
        rows.append(
            f"| {name} | {counts[name]:,} | {changed[name]} | {_num(monitor[name]['accuracy']['true'])} | "
            f"{_num(page['accuracy'])} ({_num(low)}–{_num(high)}) | "
            f"{'**PAGE**' if page['harmful'] else 'no'} | {'yes' if monitor[name]['drift'] else 'no'} |"
        )
    return "\n".join(rows)


def _detected(summary: dict) -> int:
    return len(summary["harmful"]) - len(summary["missed"])


def _misses(summary: dict) -> str:
    """The end of a harm sentence: which harmful shifts were missed, and the weakest."""
    missed, weakest = summary["missed"], summary["weakest"]
    return (f"; missed: {', '.join(missed)}" if missed else "") + (
        f". Weakest: {weakest} ({summary['harmful'][weakest]:.2f})." if weakest else "."
    )


def _monitored_cell(details: dict, stream: str, n: str, harm: dict) -> str:
    """The harm table's as-monitored column: the verdict's rate with its interval, harmful rows only."""
    point = details["as_monitored"]["harm_detection"].get(stream, {}).get("combined", {}).get(n)
    if point is None:
        return "—"
    cell = f"{point['rate']:.2f} ({point['ci_low']:.2f}–{point['ci_high']:.2f})"
    return cell if point["rate"] >= harm["target_power"] else f"**{cell} ✗**"


def registry_table() -> str:
    """The detectors as registered in shiftwatch/detection/registry.py."""
    rows = ["| detector | consumes | role | what it tests |", "|---|---|---|---|"]
    rows += [
        f"| `{d.name}` | {d.consumes} | {'verdict' if d.verdict else 'diagnostic'} | {d.summary} |"
        for d in DETECTORS.values()
    ]
    return "\n".join(rows)


def added_detector_table(name: str = "pixel_ks") -> str:
    """One registered diagnostic's power row beside the verdict's, on every stream at n = harm_n."""
    details = _load("metrics/power_details.json")
    if name not in details["false_alarms"].get("no_shift", {}):
        return f"_run `dvc repro power`: no {name} rows yet_"
    n = str(details["harm"]["n"])
    rows = [
        f"| stream | accuracy lost (points) | {name} alarms at n={n} | verdict alarms at n={n} |",
        "|---|---|---|---|",
    ]
    for kind in ("false_alarms", "detection"):
        for stream, by_detector in details[kind].items():
            if n not in by_detector.get(name, {}) or n not in by_detector["combined"]:
                continue
            loss = details["accuracy_loss_points"].get(stream)
            rows.append(
                f"| {stream}{' (false-alarm stream)' if kind == 'false_alarms' else ''} | "
                f"{'—' if loss is None else f'{loss:.1f}'} | {by_detector[name][n]['rate']:.2f} | "
                f"{by_detector['combined'][n]['rate']:.2f} |"
            )
    return "\n".join(rows)


def _family(stream: str) -> str:
    return stream.rsplit("_", 1)[0]


MITIGATIONS = (  # (key in metrics/mitigate.json, label, needs deployment labels?, what it costs)
    ("none", "deployed model, no action", "no", "—"),
    ("label_shift_bbse", "label-shift correction, BBSE priors", "no", "a matrix solve (ms)"),
    ("label_shift_em", "label-shift correction, EM priors", "no", "EM on the softmax outputs (ms)"),
    (
        "adabn",
        "AdaBN (BatchNorm statistics from the deployment batch; scored on a seeded batch of "
        "`mitigate.adabn_images` = 3,000 images per set)",
        "no",
        "adabn",
    ),
    ("finetune_augmented", "fine-tuned on A with random blur + brightness", "no", "finetune"),
)


def _mitigation_cells(m: dict) -> str:
    """Accuracy and focus-class recall; for a correction not applied (untrustworthy estimate), what
    stands (the deployed model's) and, struck through, what it would have given."""
    if m.get("applied") == 0:
        would = m["if_applied"]
        return (
            f"{_num(m['accuracy'], 4)} (not applied¹; ~~{_num(would['accuracy'], 4)}~~) | "
            f"{_num(m[f'class_{_focus()}_recall'])} (~~{_num(would[f'class_{_focus()}_recall'])}~~)"
        )
    return f"{_num(m['accuracy'], 4)} | {_num(m[f'class_{_focus()}_recall'])}"


def mitigation_table() -> str:
    mitigate = _load("metrics/mitigate_details.json")
    sets = [name for name in ("b_label", "b_covariate", "b_shift") if name in mitigate]
    cost = mitigate["cost"]
    header = (
        "| method | "
        + " | ".join(f"{s} accuracy | {s} class-{_focus()} recall" for s in sets)
        + " | needs labels | cost |"
    )
    rows = [header, "|---|" + "---|---|" * len(sets) + "---|---|"]
    for key, label, labels_needed, what in MITIGATIONS:
        cells = " | ".join(_mitigation_cells(mitigate[s][key]) for s in sets)
        if what == "adabn":
            what = "two passes over the batch (statistics, then predictions): " + ", ".join(
                f"{cost[f'adabn_{s}_seconds']:.0f} s ({s})" for s in sets
            )
        elif what == "finetune":
            what = "one epoch of training, once per model (`finetune` stage)"
        rows.append(f"| {label} | {cells} | {labels_needed} | {what} |")
    if any(mitigate[s][k].get("applied") == 0 for s in sets for k in ("label_shift_bbse", "label_shift_em")):
        rows.append("")
        rows.append(
            "¹ not applied: `monitor` flagged the class-mix estimate of this set untrustworthy "
            "(the deployed model's predictions stand); struck through, what the correction would have given."
        )
    rows.append("")
    rows.append("Selective prediction (flag max-softmax confidence below the review threshold):")
    rows.append("")
    rows.append("| set | model | flagged for review | accuracy on the rest | accuracy on all |")
    rows.append("|---|---|---|---|---|")
    for s in sets:
        for key, model in (("selective", "deployed"), ("selective_augmented", "fine-tuned")):
            m = mitigate[s][key]
            rows.append(
                f"| {s} | {model} | {_num(m['flagged_share'])} | {_num(m['accuracy_kept'], 4)} | "
                f"{_num(m['accuracy_all'], 4)} |"
            )
    return "\n".join(rows)


def check_example() -> str:
    """The output of a real `python -m shiftwatch check` run, saved by `make check-example`."""
    path = Path("metrics/check_example.txt")
    if not path.exists():
        return "_run `make check-example`_"
    return "```\n" + path.read_text().rstrip() + "\n```"


def mmd_table() -> str:
    """benchmarks/bench_mmd.py: the permutation MMD at full size."""
    b = _generated("benchmarks/mmd.json")
    if b is None:
        return "_run `make bench`_"
    rows = [
        "| images per side (512 features) | permutations | seconds | peak memory | target |",
        "|---|---|---|---|---|",
    ]
    for case in b["cases"]:
        target = (
            f"≤ {b['target']['seconds']:.0f} s, ≤ {b['target']['peak_gb']:.0f} GB" if case["per_side"] >= 10_000 else ""
        )
        rows.append(
            f"| {case['per_side']:,} | {case['permutations']:,} | {case['seconds']:.1f} | "
            f"{case['peak_gb']:.2f} GB | {target} |"
        )
    return "\n".join(rows)


def trust_table() -> str:
    """studies/trust_calibration.py: the trust flag on a calibration family and on held-out shifts."""
    t = _generated("studies/trust_calibration.json")
    if t is None:
        return "_run `python studies/trust_calibration.py`_"
    rows = [
        f"| family | tolerance | draws | bad estimates (class-{_focus()} share off > 1 pt) | flagged when bad | "
        "flagged when good |",
        "|---|---|---|---|---|---|",
    ]
    for family in ("calibration", "held_out"):
        label = f"{family.replace('_', '-')}: {', '.join(t[family]['shifts'])}"
        for which, tolerance in (("at_chosen", t["chosen_tolerance"]), ("at_current", t["current_tolerance"])):
            r = t[family][which]
            tag = "chosen" if which == "at_chosen" else "params.yaml"
            rows.append(
                f"| {label} | {tolerance} ({tag}) | {r['draws']} | {r['bad_estimates']} | "
                f"{_num(r['flag_rate_when_bad'], 2)} | {_num(r['flag_rate_when_good'], 2)} |"
            )
    return "\n".join(rows)


def seed_table() -> str:
    """Headline numbers per training seed with mean ± sd (tools/seed_spread.py)."""
    spread = _generated("metrics/seed_spread.json")
    if spread is None:
        return "_run `make seeds`_"
    seeds = [str(s) for s in spread["seeds"]]
    rows = [
        "| headline number | " + " | ".join(f"train.seed={s}" for s in seeds) + " | mean ± sd |",
        "|---|" + "---|" * len(seeds) + "---|",
    ]
    for key, m in spread["metrics"].items():
        cells = [_num(m["by_seed"].get(s)) for s in seeds]
        summary = "—" if m["mean"] is None else f"{_num(m['mean'])} ± {_num(m['sd'])}"
        rows.append(f"| {key} | " + " | ".join(cells) + f" | {summary} |")
    return "\n".join(rows)


TABLES = {
    "detection": detection_table,
    "accuracy": accuracy_table,
    "study": study_table,
    "benchmark": benchmark_table,
    "stages": stage_table,
    "exp-show": exp_show_table,
    "monitor": monitor_table,
    "estimates": estimates_table,
    "false-alarms": false_alarm_table,
    "power": power_table,
    "mitigation": mitigation_table,
    "check-example": check_example,
    "seeds": seed_table,
    "mmd-bench": mmd_table,
    "trust": trust_table,
    "harm": harm_table,
    "power-monitored": monitored_table,
    "timeline": timeline_table,
    "check-bench": check_bench_table,
    "detectors": registry_table,
    "pixel-ks": added_detector_table,
    "page": page_table,
    "page-sets": page_sets_table,
    "page-targets": page_targets_table,
    "false-pages": false_pages_table,
    "estimator-survey": survey_table,
    "headline": headline_table,
}


def refresh(text: str) -> str:
    for name, build in TABLES.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
        text = pattern.sub(lambda m, build=build: f"{m.group(1)}{build()}\n{m.group(2)}", text)
    return text


def documents() -> list[Path]:
    """Every file that may hold generated tables: README.md, then the docs pages."""
    return [Path("README.md"), *sorted(Path("docs").glob("*.md"))]


def main() -> None:
    for path in [Path(arg) for arg in sys.argv[1:]] or documents():
        text = path.read_text()
        refreshed = refresh(text)
        if refreshed != text:
            path.write_text(refreshed)
        print(f"{'refreshed' if refreshed != text else 'up to date'}: {path}")


if __name__ == "__main__":
    main()
