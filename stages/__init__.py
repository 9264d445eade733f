"""The pipeline's stages, one script each, run by DVC as `python -m stages.<name>`.

Run that way, the MLflow helper process starts here, before the stage imports torch and
scikit-learn, so that its own start-up overlaps theirs (see shiftwatch.tracking.runs.start_helper).
Importing a stage module (tests, tools) starts nothing.
"""

import sys

# runpy sets argv[0] to the script path only after this import; `validate` logs nothing
if sys.argv[:1] == ["-m"] and "stages.validate" not in sys.orig_argv:
    from shiftwatch.tracking.runs import start_helper

    start_helper()
