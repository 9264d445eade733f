import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]  # shiftwatch itself is installed (make setup: pip install -e .)

# No network on CI: keep DVC and MLflow from trying to send telemetry.
os.environ.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")

from shiftwatch.data.fashion_mnist import DEBIAN_DIR, _has_all_files  # noqa: E402 (after the environment is set)

needs_fashion_mnist = pytest.mark.skipif(
    not _has_all_files(DEBIAN_DIR),
    reason="FashionMNIST not installed: apt-get install dataset-fashion-mnist (.ci/run does)",
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    """A small check project (model, reference, estimator, batches; see test_check.make_project),
    read-only to the tests, so built once per session (~9 s each) for every module that checks."""
    from test_check import make_project

    return make_project(tmp_path_factory.mktemp("project"))


@dataclass(frozen=True)
class Reproduced:
    live: Path  # test_pipeline's repo: its tests run experiments in it
    frozen: Path  # a copy taken right after `dvc repro`: copy it again, never change it

    def fresh_copy(self, destination: Path) -> Path:
        """The reproduced repo as `dvc repro` left it (git history, DVC cache, outputs, and its
        local MLflow store, whose artifact paths still name the live repo)."""
        shutil.copytree(self.frozen, destination, symlinks=True)
        return destination


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """One small `dvc repro` (~2 min) for the session, shared by the pipeline tests and the
    team-server test, which starts its experiments from a fresh copy instead of reproducing."""
    from test_pipeline import reproduce_small

    live = reproduce_small(tmp_path_factory.mktemp("shiftwatch"))
    frozen = tmp_path_factory.mktemp("reproduced") / "repo"
    shutil.copytree(live, frozen, symlinks=True)
    return Reproduced(live, frozen)
