"""`shiftwatch timeline`: logged checks read back from a real MLflow store, in time order."""

import json

import pytest
from test_check import check  # project: conftest.py's fixture

from shiftwatch.__main__ import main

pytestmark = pytest.mark.slow  # a real MLflow store of logged checks: `make test-fast` leaves it out


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_timeline_orders_batches_by_time_and_names_the_first_alerts(project, store):
    # Logged out of order: the timeline follows --time, not the order of logging.
    batches = {
        "2026-11-01T03:00": project / "bright.npy",
        "2026-11-01T00:00": project / "clean.npy",
        "2026-11-01T02:00": project / "bright.npy",
        "2026-11-01T01:00": project / "clean.npy",
    }
    for taken, batch in batches.items():
        check(project, batch, "--log", "--quiet", "--time", taken)
    # a fifth batch that the estimate calls harmful: the first page
    check(
        project,
        project / "clean.npy",
        "--estimator",
        project / "paging_estimator.json",
        "--log",
        "--quiet",
        "--time",
        "2026-11-01T04:00",
    )
    # stage harm's no-shift cell, as the pipeline writes it: 30 of 1,000 draws paged at n = 200,
    # 2 of them right after a draw that paged
    (store / "metrics").mkdir()
    (store / "metrics" / "harm_details.json").write_text(
        json.dumps(
            {
                "cells": {
                    "no_shift": {
                        "draws": {
                            "100": {"page_rate": 0.12, "ci_high": 0.2, "repetitions": 1000, "confirmed_pages": 15},
                            "200": {"page_rate": 0.03, "ci_high": 0.0425, "repetitions": 1000, "confirmed_pages": 2},
                        }
                    }
                }
            }
        )
    )
    out = store / "timeline.json"
    assert main(["timeline", "--png", str(store / "t.png"), "--json", str(out), "--html", str(store / "t.html")]) == 0
    timeline = json.loads(out.read_text())
    assert [p["time"] for p in timeline["points"]] == [
        "2026-11-01T00:00:00+00:00",
        "2026-11-01T01:00:00+00:00",
        "2026-11-01T02:00:00+00:00",
        "2026-11-01T03:00:00+00:00",
        "2026-11-01T04:00:00+00:00",
    ]
    assert [p["verdict"] for p in timeline["points"]] == ["ok", "ok", "ALERT", "ALERT", "ok"]
    assert [p["page"] for p in timeline["points"]] == ["ok", "ok", "ok", "ok", "PAGE"]
    assert timeline["first_alerts"]["verdict"]["index"] == 2 and timeline["first_alerts"]["page"]["index"] == 4
    assert timeline["first_alerts"]["confirmed_page"] is None  # one page, not confirmed by a second
    low, high = timeline["points"][0]["interval"]
    assert low <= timeline["points"][0]["estimated_accuracy"] <= high
    # 200-image batches, 24 a day: 168 a week at the no-shift page rate of n = 200
    assert timeline["false_pages"]["judged_n"] == 200
    assert timeline["false_pages"]["per_week"] == pytest.approx(168 * 0.03)
    assert timeline["false_pages"]["per_week_upper"] == pytest.approx(168 * 0.0425)
    assert timeline["false_pages"]["confirmed_per_week"] == pytest.approx(168 * 0.03**2)
    assert timeline["false_pages"]["confirmed_per_week_upper"] == pytest.approx(168 * 0.0425**2)
    assert (timeline["false_pages"]["draws"], timeline["false_pages"]["confirmed_seen"]) == (1000, 2)
    assert timeline["first_alerts"]["image_stats"]["index"] == 2  # the black background lifts
    assert (store / "t.png").stat().st_size > 10_000
    assert 'id="first-alerts"' in (store / "t.html").read_text()

    since = store / "since.json"
    assert main(["timeline", "--png", str(store / "s.png"), "--json", str(since), "--since", "2026-11-01T02:00"]) == 0
    assert json.loads(since.read_text())["first_alerts"]["verdict"]["index"] == 0


def test_timeline_without_logged_checks_says_how_to_make_them(store, capsys):
    assert main(["timeline", "--png", str(store / "t.png")]) == 2
    error = capsys.readouterr().err
    assert "shiftwatch check BATCH --log" in error and error.count("\n") == 1
    assert not (store / "t.png").exists()


def test_a_bad_time_is_refused_before_any_work(project, store, capsys):
    assert check(project, project / "clean.npy", "--log", "--time", "yesterday") == 2
    assert "--time 'yesterday': not an ISO 8601 time" in capsys.readouterr().err
    assert not (store / "mlruns").exists() and not (store / "mlflow.db").exists()


def test_timeline_reads_checks_from_their_experiment_and_older_ones_from_the_pipelines(project, store):
    """`check --log` runs land in shiftwatch-checks; a store from before that split keeps its
    checks in the pipeline's experiment, and the timeline still draws them."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from shiftwatch.tracking.store import CHECKS_EXPERIMENT, EXPERIMENT

    check(project, project / "bright.npy", "--log", "--quiet", "--time", "2026-11-01T02:00")
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name(CHECKS_EXPERIMENT).experiment_id])
    older = client.create_run(
        client.create_experiment(EXPERIMENT),
        tags={
            **{k: v for k, v in logged.data.tags.items() if not k.startswith("mlflow.")},
            "shiftwatch.batch_time": "2026-11-01T01:00:00+00:00",
            "shiftwatch.verdict": "ok",
        },
    ).info.run_id
    metrics = {**logged.data.metrics, "check.batch.time": logged.data.metrics["check.batch.time"] - 3600}
    client.log_batch(
        older,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in logged.data.params.items()],
    )
    client.set_terminated(older)

    out = store / "timeline.json"
    assert main(["timeline", "--png", str(store / "t.png"), "--json", str(out)]) == 0
    points = json.loads(out.read_text())["points"]
    assert [(p["time"], p["verdict"]) for p in points] == [
        ("2026-11-01T01:00:00+00:00", "ok"),
        ("2026-11-01T02:00:00+00:00", "ALERT"),
    ]


def test_a_stream_logged_with_confirm_with_shows_its_first_hurt_batch_and_its_confirmed_page(project, store):
    """The cron pattern (`check --confirm-with last.json --json last.json --log`): the second hurt
    batch in a row is the one that paged; the timeline, reading the logged runs back, names the
    first hurt batch and the confirmed page, and keeps each batch's own answer."""
    last = store / "last.json"
    paging = ("--estimator", project / "paging_estimator.json")
    stream = [
        ("2026-11-02T00:00", ()),
        ("2026-11-02T01:00", paging),
        ("2026-11-02T02:00", paging),
        ("2026-11-02T03:00", ()),
    ]
    codes = [
        check(
            project,
            project / "clean.npy",
            *estimator,
            "--confirm-with",
            last,
            "--json",
            last,
            "--log",
            "--quiet",
            "--time",
            taken,
        )
        for taken, estimator in stream
    ]
    assert codes == [0, 0, 1, 0]  # hurt twice in a row: the second pages

    out = store / "timeline.json"
    assert main(["timeline", "--png", str(store / "t.png"), "--json", str(out)]) == 0
    timeline = json.loads(out.read_text())
    assert [p["harmful"] for p in timeline["points"]] == [False, True, True, False]
    assert [p["page"] for p in timeline["points"]] == ["ok", "ok", "PAGE", "ok"]
    assert timeline["first_alerts"]["page"]["index"] == 1  # the first hurt batch
    assert timeline["first_alerts"]["confirmed_page"]["index"] == 2  # the one that paged
