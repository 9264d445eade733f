"""validate: check params.yaml against the schema before any other stage runs.

DVC removes a stage's previous outputs before it runs the stage, and a stage validates its
params only then: a bad `monitor.alpha` once cost the 46 outputs of `power` (~7 minutes to
rebuild), a missing section detect's six metric files. Every other stage depends on this
stage's output, so `dvc repro` and `dvc exp run` stop here, with one line naming the key, and
remove nothing else. The output never changes, so a valid edit reruns only the stages that
read the keys it changed. No MLflow run: there is nothing to log.

Reads params: all of params.yaml (the schema is shiftwatch/core/params.py).
Writes metrics/params_checked.json (constant: what passed, and why the file exists).
"""

from shiftwatch.core.io import write_json
from shiftwatch.core.params import load_params
from shiftwatch.core.stage import run_stage

CHECKED = "metrics/params_checked.json"


def main() -> None:
    load_params()  # one ShiftwatchError naming the key on a bad value, a missing or a doubled key
    write_json(
        CHECKED,
        {
            "params.yaml": "valid against shiftwatch.core.params.Params",
            "why": "every stage depends on this file, so DVC stops at a bad value "
            "before it removes any stage's outputs",
        },
    )


if __name__ == "__main__":
    run_stage("validate", main)
