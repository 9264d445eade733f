"""`shiftwatch check --log`: one MLflow run per checked batch in the project's store, in the
experiment `shiftwatch-checks` (CHECKS_EXPERIMENT, apart from the pipeline's runs), with the
params, every number of the report, the report itself and its lineage. The run starts when
the check started and ends when the check and its logging are done.
"""

from __future__ import annotations

import time
from pathlib import Path

from shiftwatch.tracking.store import (
    CHECKS_EXPERIMENT,
    _experiment_id,
    _retry,
    dvc_tags,
    flatten_numbers,
    store_client,
    tracking_uri,
)


def log_check(
    report: dict,
    params: dict[str, object],
    started_ms: int,
    html: Path | None = None,
    pictures: dict[str, bytes] | None = None,
) -> str:
    """One MLflow run (tags dvc.stage = shiftwatch.role = "check") in the experiment
    CHECKS_EXPERIMENT, from `started_ms` (when the check started, ms since the epoch) to now,
    with the params `check` read, every number of the report as a metric (check.<path>, the
    class mix as check.label_shift.<method>.class_<k>), the report as check.json, and the
    HTML report (`html`) with its figures (`pictures`, PNG bytes by name) when given."""
    from datetime import datetime

    from mlflow.entities import Metric, Param

    uri = tracking_uri()
    client = store_client(uri)
    experiment_id = _retry(lambda: _experiment_id(client, uri, CHECKS_EXPERIMENT))
    tags = {
        **dvc_tags("check"),
        "shiftwatch.role": "check",
        "shiftwatch.page": report["page"],
        "shiftwatch.verdict": report["verdict"],
        "shiftwatch.batch": report["batch"]["path"],
        "shiftwatch.reference": report["reference"]["path"],
        "shiftwatch.model": report["model"],
        "shiftwatch.model_md5": report.get("model_md5", ""),
        "shiftwatch.batch_time": report["batch"].get("time", ""),
    }
    run = _retry(
        lambda: client.create_run(
            experiment_id, run_name=f"check {Path(report['batch']['path']).name}", start_time=started_ms, tags=tags
        )
    )
    run_id = run.info.run_id
    mixes = {
        method: {f"class_{k}": share for k, share in enumerate(report["label_shift"][method])}
        for method in ("bbse", "em", "reference")
    }
    numbers = flatten_numbers(
        {key: report[key] for key in ("harmful", "estimate", "drift", "tests", "accuracy", "seconds")}, "check"
    )
    numbers.update(flatten_numbers({"label_shift": {**report["label_shift"], **mixes}}, "check"))
    numbers["check.batch.images"] = report["batch"]["images"]
    numbers["check.estimate.interval_low"], numbers["check.estimate.interval_high"] = report["estimate"]["interval"]
    if report["batch"].get("time"):
        numbers["check.batch.time"] = datetime.fromisoformat(report["batch"]["time"]).timestamp()
    now = int(time.time() * 1000)
    status = "FAILED"
    try:
        _retry(
            lambda: client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in numbers.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )
        )
        client.log_dict(run_id, report, "check.json")
        _retry(lambda: client.log_inputs(run_id, _lineage(report)))
        if html is not None:
            client.log_artifact(run_id, str(html))
        for name, png in (pictures or {}).items():
            client.log_image(run_id, _decoded(png), f"figures/{name}.png")
        status = "FINISHED"
    finally:
        _retry(lambda: client.set_terminated(run_id, status))
    return run_id


def _lineage(report: dict) -> list:
    """The batch and the reference as MLflow dataset inputs, with their md5s as digests."""
    from shiftwatch.core.lineage import md5_of
    from shiftwatch.tracking.registry import dataset_input

    return [
        dataset_input(report[key]["path"], md5_of(report[key]["path"]), context)
        for key, context in (("batch", "check"), ("reference", "reference"))
        if Path(report[key]["path"]).exists()
    ]


def _decoded(png: bytes):
    """PNG bytes -> an RGB(A) array, what MlflowClient.log_image takes."""
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))
