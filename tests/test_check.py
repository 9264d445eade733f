"""`python -m shiftwatch check`: a real (untrained) ResNet-18, a reference summary written like
the reference stage writes it, and batches as arrays and PNG folders; exit codes 0 / 1 / 2."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftwatch import CLASS_NAMES
from shiftwatch.__main__ import main
from shiftwatch.core.lineage import file_md5
from shiftwatch.data.batch import load_batch
from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS
from shiftwatch.estimation.accuracy import SIGNALS, EstimatorFit, clear_border, reference_summary
from shiftwatch.model.features import features
from shiftwatch.model.network import build_resnet18, predict_proba, predict_with_embeddings, save_state_dict

pytestmark = pytest.mark.slow  # builds a model project, runs Chromium: `make test-fast` leaves it out

REPO = Path(__file__).resolve().parents[1]


def blobs(n: int, seed: int, size: int = 28) -> np.ndarray:
    """FashionMNIST-like stand-ins: 1-3 blurred bright blobs on an exactly black background,
    float32 (n, size, size) in [0, 1]; the same seed gives the same images."""
    rng = np.random.default_rng(seed)
    grid = (np.arange(size) + 0.5) / size
    centres = rng.uniform(0.25, 0.75, (n, 3, 2))
    widths = rng.uniform(0.06, 0.15, (n, 3, 1, 1))
    amplitudes = rng.uniform(0.4, 1.0, (n, 3, 1, 1)) * (rng.random((n, 3, 1, 1)) < 0.7)
    amplitudes[:, 0] = rng.uniform(0.6, 1.0, (n, 1, 1))  # at least one blob
    dy = (grid[None, None, :, None] - centres[..., 0, None, None]) ** 2
    dx = (grid[None, None, None, :] - centres[..., 1, None, None]) ** 2
    images = (amplitudes * np.exp(-(dy + dx) / (2 * widths**2))).sum(axis=1)
    images = np.clip(images, 0, 1)
    images[images < 0.05] = 0.0
    return images.astype(np.float32)


def make_project(root: Path) -> Path:
    """Model, reference summary (300 images, every class) and params.yaml in `root`: the session
    fixture `project` (conftest.py), built once for test_check, test_serve and test_timeline."""
    model = build_resnet18(seed=0)
    save_state_dict(model, root / "resnet18.pt")
    images = blobs(300, seed=1)
    labels = np.random.default_rng(2).permutation(np.arange(300) % 10)
    probabilities, embeddings = predict_with_embeddings(model, images, 1000, torch.device("cpu"), progress=False)
    view = features(images, probabilities, embeddings)
    np.savez(
        root / "test.npz",
        probabilities=view.probabilities,
        embeddings=view.embeddings,
        image_stats=view.image_stats,
        pixels=view.pixels,
        labels=labels,
        model_md5=np.array(file_md5(root / "resnet18.pt")),
    )
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    write_estimator(root, model, images, probabilities, labels)
    # An estimator whose reference the model saw as noise images it labelled itself (accuracy 1,
    # its fine-tuned twin agreeing far more than on blobs): on blobs it estimates a large loss.
    noise = np.random.default_rng(4).random((300, 28, 28)).astype(np.float32)
    noise_probabilities = predict_proba(model, noise, 1000, torch.device("cpu"), progress=False)
    write_estimator(
        root, model, noise, noise_probabilities, noise_probabilities.argmax(1), name="paging_estimator.json"
    )
    np.save(root / "clean.npy", blobs(200, seed=3))
    np.save(root / "bright.npy", np.clip(blobs(200, seed=3) + 0.2, 0, 1))
    return root


def write_estimator(
    root: Path, model, images, probabilities, labels, page_points: float = 3.0, name: str = "estimator.json"
) -> None:
    """A fine-tuned model (another seed) and an accuracy estimator for this model, with the
    reference summary the harm stage writes (weights as the real fit's, order of magnitude)."""
    finetuned = build_resnet18(seed=5)
    save_state_dict(finetuned, root / "finetuned.pt")
    aux = predict_proba(finetuned, images, 1000, torch.device("cpu"), progress=False)
    fit = EstimatorFit((*SIGNALS[:4], "clear_border"), (0.0, 0.5, 0.2, 0.4, 0.3), 0.01)  # as harm.signals
    summary = reference_summary(probabilities, labels, aux, fit, clear_border(images))
    payload = {
        **fit.as_dict(),
        "page_points": page_points,
        "harm_points": 5.0,
        "reference": {
            **summary.as_dict(),
            "model_md5": file_md5(root / "resnet18.pt"),
            "finetuned_md5": file_md5(root / "finetuned.pt"),
        },
    }
    (root / name).write_text(json.dumps(payload))


INPUTS = {  # the project's files `check` and `serve` read, by option
    "--reference": "test.npz",
    "--model": "resnet18.pt",
    "--params": "params.yaml",
    "--estimator": "estimator.json",
    "--finetuned": "finetuned.pt",
}


def input_args(project) -> list[str]:
    """The options that point `check` or `serve` at the test project's inputs."""
    return [arg for option, name in INPUTS.items() for arg in (option, str(project / name))]


def check(project, batch, *extra):
    return main(["check", str(batch), *input_args(project), *map(str, extra)])


def test_a_batch_like_the_reference_passes_with_every_detector_in_the_json(project, tmp_path, capsys):
    out = tmp_path / "reports" / "clean.json"
    assert check(project, project / "clean.npy", "--json", out) == 0

    report = json.loads(out.read_text())
    assert report["verdict"] == "ok" and report["drift"] == 0 and report["alerting"] == []
    assert list(report["tests"]) == list(FEATURE_DETECTORS)
    for test in report["tests"].values():
        assert 0 <= test["pvalue"] <= test["adjusted_pvalue"] <= 1
    assert list(report["diagnostics"]) == list(DIAGNOSTIC_DETECTORS)  # the registry's, e.g. pixel_ks
    assert 0 <= report["diagnostics"]["pixel_ks"]["pvalue"] <= 1
    assert report["batch"]["images"] == 200 and report["reference"]["images"] == 300
    shift = report["label_shift"]
    assert shift["focus_class"] == 7 and shift["class_names"] == list(CLASS_NAMES)
    assert np.isclose(sum(shift["bbse"]), 1) and np.isclose(sum(shift["em"]), 1)
    assert shift["reference"] == [0.1] * 10
    assert 0 <= report["accuracy"]["atc"] <= 1 and 0 < report["accuracy"]["average_confidence"] <= 1
    assert report["params"]["monitor.alpha"] == 0.05 and report["params"]["seed"] == 42

    assert report["page"] == "ok" and report["harmful"] == 0
    estimate = report["estimate"]
    assert estimate["loss_points"] < estimate["page_points"] == 3 and estimate["harm_points"] == 5
    low, high = estimate["interval"]
    assert low <= estimate["accuracy"] <= high and 0 < estimate["reference_accuracy"] < 1

    printed = capsys.readouterr().out
    assert printed.startswith("ok: the model is not hurt: estimated accuracy ")
    assert printed.splitlines()[1] == "changed: no (no detector alarms)"
    assert "unchanged: no shift detected" in printed and "PAGE" not in printed
    assert "untrustworthy" not in printed.lower()  # a batch with no detected change is not suspect
    assert "* 7 Sneaker" in printed and "<- focus" in printed
    assert all(name in printed for name in FEATURE_DETECTORS)
    assert "pixel_ks" in printed and "(diagnostic, " in printed


def test_a_healthy_batch_saved_as_resized_rgb_pngs_does_not_alarm(project, tmp_path):
    # Issue #8's case: 20 healthy images saved as 64x64 RGB PNGs (bilinear), which check resizes
    # back. That leaves fewer exactly-black pixels, and the old image_stats test on the zero-pixel
    # share raised an ALERT from that alone. (Larger resized batches do alarm, from the model's
    # outputs too: on FashionMNIST the round trip costs the model 1.4 accuracy points.)
    from shiftwatch.detection.basic import ks_test
    from shiftwatch.model.features import image_statistics

    folder = tmp_path / "resized"
    folder.mkdir()
    for i, image in enumerate(blobs(20, seed=3)):
        gray = Image.fromarray(np.round(image * 255).astype(np.uint8))
        gray.resize((64, 64), Image.Resampling.BILINEAR).convert("RGB").save(folder / f"{i:03d}.png")
    loaded, _ = load_batch(folder)
    zero_share = ks_test(image_statistics(blobs(300, seed=1))[:, 1], image_statistics(loaded)[:, 1])
    assert zero_share.pvalue < 0.05  # the trace the old test reacted to is there
    out = tmp_path / "resized.json"
    assert check(project, folder, "--json", out) == 0
    assert json.loads(out.read_text())["alerting"] == []


def test_a_brighter_batch_changed_without_harm_exits_0_or_3_with_fail_on_change(project, tmp_path, capsys):
    # The untrained model's estimate does not drop on brighter blobs: a change, no page.
    out = tmp_path / "bright.json"
    assert check(project, project / "bright.npy", "--json", out) == 0
    report = json.loads(out.read_text())
    assert report["verdict"] == "ALERT" and report["drift"] == 1 and report["harmful"] == 0
    assert "image_stats" in report["alerting"]  # the black background is gone
    assert report["tests"]["image_stats"]["adjusted_pvalue"] < 1e-6
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("ok: the model is not hurt")
    assert printed[1].startswith("changed: yes: ") and "images brighter (mean pixel" in printed[1]
    assert printed[2].startswith("do: no action needed for the model")
    assert check(project, project / "bright.npy", "--fail-on", "change", "--quiet") == 3


def test_a_batch_the_estimate_calls_harmful_pages_with_exit_code_1(project, tmp_path, capsys):
    out = tmp_path / "clean.json"
    assert check(project, project / "clean.npy", "--estimator", project / "paging_estimator.json", "--json", out) == 1
    report = json.loads(out.read_text())
    assert report["page"] == "PAGE" and report["harmful"] == 1
    assert report["estimate"]["loss_points"] >= report["estimate"]["page_points"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("PAGE: the model is hurt: estimated accuracy ")
    assert any(line.startswith("do: review the low-confidence predictions") for line in printed[:6])
    # harmful wins over changed: --fail-on change still gives 1
    assert (
        check(
            project,
            project / "clean.npy",
            "--estimator",
            project / "paging_estimator.json",
            "--fail-on",
            "change",
            "--quiet",
        )
        == 1
    )


@pytest.mark.parametrize(
    "harmful, changed, fail_on, code",
    [
        (0, 0, "harm", 0),
        (0, 1, "harm", 0),
        (1, 0, "harm", 1),
        (1, 1, "harm", 1),
        (0, 0, "change", 0),
        (0, 1, "change", 3),
        (1, 0, "change", 1),
        (1, 1, "change", 1),
    ],
)
def test_exit_codes_gate_on_harm_by_default_and_on_change_when_asked(harmful, changed, fail_on, code):
    from shiftwatch.operations.page import exit_code

    assert exit_code({"harmful": harmful, "page": "PAGE" if harmful else "ok", "drift": changed}, fail_on) == code


def test_confirm_with_pages_only_on_the_second_harmful_batch_in_a_row(project, tmp_path, capsys):
    """The cron pattern: one file is both the previous report and this run's --json."""
    last, paging = tmp_path / "last.json", ("--estimator", project / "paging_estimator.json")
    # the stream's first batch: harmful, but nothing can confirm it yet
    assert check(project, project / "clean.npy", *paging, "--json", last, "--confirm-with", last) == 0
    first = json.loads(last.read_text())
    assert (first["harmful"], first["page"]) == (1, "ok")
    assert first["confirmation"]["previous_harmful"] is None
    assert capsys.readouterr().out.startswith(
        "HURT, not paged yet (no previous report; a second hurt batch in a row pages): estimated accuracy "
    )
    # the second harmful batch in a row pages, and says it is confirmed
    assert (
        check(
            project,
            project / "clean.npy",
            *paging,
            "--json",
            last,
            "--confirm-with",
            last,
            "--time",
            "2026-12-01T01:00",
        )
        == 1
    )
    second = json.loads(last.read_text())
    assert second["page"] == "PAGE" and second["confirmation"]["previous_harmful"] is True
    assert capsys.readouterr().out.startswith(
        "PAGE: the model is hurt (confirmed: the previous batch was hurt too): estimated accuracy "
    )
    # a healthy batch in between resets it
    assert check(project, project / "clean.npy", "--json", last, "--confirm-with", last) == 0
    assert check(project, project / "clean.npy", *paging, "--confirm-with", last, "--quiet") == 0


@pytest.mark.parametrize("content", ["{not json", '{"verdict": "ok"}', "[1, 2]"])
def test_confirm_with_a_file_that_is_no_report_exits_2_before_the_check(project, tmp_path, capsys, content):
    bad, out = tmp_path / "previous.json", tmp_path / "out.json"
    bad.write_text(content)
    assert check(project, project / "clean.npy", "--confirm-with", bad, "--json", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"shiftwatch check: error: --confirm-with {bad}: ")
    assert not out.exists() and bad.read_text() == content


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "not JSON"),
        ('{"signals": []}', "not an accuracy"),
        ('{"signals": ["x"], "weights": [1], "page_points": 3, "reference": {}}', "known signals"),
    ],
)
def test_a_corrupt_estimator_exits_2_with_one_line_and_no_report(project, tmp_path, capsys, content, words):
    bad, out = tmp_path / "estimator.json", tmp_path / "out.json"
    bad.write_text(content)
    assert check(project, project / "clean.npy", "--estimator", bad, "--json", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "dvc repro harm" in err[0] and not out.exists()


def test_an_estimator_for_another_model_is_refused(project, tmp_path, capsys):
    payload = json.loads((project / "estimator.json").read_text())
    payload["reference"]["model_md5"] = "0" * 32
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(payload))
    assert check(project, project / "clean.npy", "--estimator", stale) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dvc repro harm" in err[0] and "000000000000" in err[0]


def test_uint8_channels_last_and_rgb_arrays_give_the_same_answer_as_floats(project, tmp_path):
    images = np.rint(blobs(200, seed=3) * 255).astype(np.uint8)
    np.savez(tmp_path / "gray.npz", images=images[..., None], labels=np.zeros(200))
    np.savez(tmp_path / "rgb.npz", np.repeat(images[..., None], 3, axis=3))  # the only array
    np.save(tmp_path / "float.npy", images.astype(np.float32) / 255)
    reports = []
    for name in ("gray.npz", "rgb.npz", "float.npy"):
        assert check(project, tmp_path / name, "--json", tmp_path / f"{name}.json", "--quiet") == 0
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    for report in reports[1:]:
        for name, test in report["tests"].items():
            assert test["pvalue"] == pytest.approx(reports[0]["tests"][name]["pvalue"], abs=1e-6)
    assert reports[1]["batch"]["input_shape"] == [200, 28, 28, 3]


def test_arrays_of_another_size_are_resized_antialiased(tmp_path):
    images = blobs(5, seed=4, size=56)
    np.save(tmp_path / "big.npy", images)
    resized, info = load_batch(tmp_path / "big.npy")
    assert resized.shape == (5, 28, 28) and resized.dtype == np.float32
    assert info["resized"] and info["input_sizes"] == ["56x56"]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(images)[:, None], size=(28, 28), mode="bilinear", antialias=True
    )[:, 0].numpy()
    np.testing.assert_allclose(resized, np.clip(expected, 0, 1), atol=1e-6)
    # Antialiasing averages: the mean brightness survives the 2x downsampling.
    np.testing.assert_allclose(resized.mean(axis=(1, 2)), images.mean(axis=(1, 2)), rtol=0.02)


def test_a_folder_of_rgb_pngs_of_another_size_is_accepted(project, tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(blobs(60, seed=5, size=40)):
        gray = np.rint(image * 255).astype(np.uint8)
        Image.fromarray(np.stack([gray] * 3, axis=2), mode="RGB").save(folder / f"{i:03d}.png")
    (folder / "notes.txt").write_text("not an image, not a PNG name: ignored\n")
    out = tmp_path / "pngs.json"
    assert check(project, folder, "--json", out, "--quiet") in (0, 1)
    batch = json.loads(out.read_text())["batch"]
    assert batch["source"] == "folder" and batch["images"] == 60 and batch["files_ignored"] == 1
    assert batch["input_sizes"] == ["40x40"] and batch["resized"]
    images, _ = load_batch(folder)
    assert images.shape == (60, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert (images == 0).mean() > 0.3  # black background kept black


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.mkdir()
        (path / "x.png").write_text(content)
    else:
        np.save(path, content)
    return path


BAD_BATCHES = {
    "empty.npy": (np.zeros((0, 28, 28), np.float32), "empty"),
    "nan.npy": (np.where(np.eye(28, dtype=bool), np.nan, 0.5)[None].repeat(4, 0), "NaN"),
    "one_image.npy": (np.zeros((28, 28), np.float32), "add a batch axis"),
    "five_dims.npy": (np.zeros((2, 1, 28, 28, 1), np.float32), "5 dimensions"),
    "channels_first.npy": (np.zeros((4, 1, 28, 28), np.uint8), "transpose"),
    "range.npy": (np.full((4, 28, 28), 255.0, np.float32), "divide by 255"),
    "int64.npy": (np.zeros((4, 28, 28), np.int64), "dtype int64"),
    "textfolder": ("this is text, not a PNG\n", "not an image"),
}


@pytest.mark.parametrize("name", BAD_BATCHES)
def test_bad_batches_exit_2_with_one_line_and_no_json(project, tmp_path, capsys, name):
    content, words = BAD_BATCHES[name]
    batch = _write(tmp_path, name, content)
    out = tmp_path / "out.json"
    assert check(project, batch, "--json", out) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shiftwatch check: error: ")
    assert words in lines[0] and str(batch) in lines[0]
    assert not out.exists() and list(tmp_path.glob(".out.json*")) == []


@pytest.mark.parametrize(
    "missing, words",
    [
        ("--model", "dvc repro train"),
        ("--reference", "dvc repro reference"),
        ("--params", "pass --params"),
        ("--estimator", "dvc repro harm"),
        ("--finetuned", "dvc repro finetune"),
    ],
)
def test_missing_model_reference_or_params_exit_2(project, tmp_path, capsys, missing, words):
    paths = {
        "--reference": project / "test.npz",
        "--model": project / "resnet18.pt",
        "--params": project / "params.yaml",
        "--estimator": project / "estimator.json",
        "--finetuned": project / "finetuned.pt",
        missing: tmp_path / "nowhere" / "file",
    }
    out = tmp_path / "out.json"
    argv = ["check", str(project / "clean.npy"), "--json", str(out)]
    assert main(argv + [str(a) for pair in paths.items() for a in pair]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "not found" in err[0] and words in err[0]
    assert not out.exists()


def test_a_reference_made_by_another_model_is_refused(project, tmp_path, capsys):
    """A retrained model with a stale reference: every detector would compare two different
    networks' outputs and alarm on any batch. `check` refuses instead (exit 2, one line)."""
    retrained = tmp_path / "retrained.pt"
    save_state_dict(build_resnet18(seed=1), retrained)
    out = tmp_path / "out.json"
    argv = [
        "check",
        str(project / "clean.npy"),
        "--reference",
        str(project / "test.npz"),
        "--params",
        str(project / "params.yaml"),
        "--json",
        str(out),
        "--estimator",
        str(project / "estimator.json"),
        "--finetuned",
        str(project / "finetuned.pt"),
    ]
    assert main([*argv, "--model", str(retrained)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and file_md5(retrained)[:12] in err[0] and "dvc repro reference" in err[0]
    assert file_md5(project / "resnet18.pt")[:12] in err[0] and not out.exists()

    with np.load(project / "test.npz") as archive:  # a reference from before the md5 was recorded
        np.savez(tmp_path / "old.npz", **{k: archive[k] for k in archive.files if k != "model_md5"})
    argv[3] = str(tmp_path / "old.npz")
    assert main([*argv, "--model", str(project / "resnet18.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not record which model" in err[0]

    assert main([*argv[:3], str(project / "test.npz"), *argv[4:], "--model", str(project / "resnet18.pt")]) == 0
    assert json.loads(out.read_text())["model_md5"] == file_md5(project / "resnet18.pt")


def test_the_entry_point_runs_as_a_module_with_its_exit_codes(project, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    common = [
        "--reference",
        str(project / "test.npz"),
        "--params",
        str(project / "params.yaml"),
        "--estimator",
        str(project / "estimator.json"),
        "--finetuned",
        str(project / "finetuned.pt"),
        "--fail-on",
        "change",
    ]
    alert = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftwatch",
            "check",
            str(project / "bright.npy"),
            "--model",
            str(project / "resnet18.pt"),
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alert.returncode == 3, alert.stderr  # changed, not harmful
    assert "change     changed: shift detected by" in alert.stdout and "time " in alert.stdout
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "shiftwatch",
            "check",
            str(project / "clean.npy"),
            "--model",
            str(tmp_path / "none.pt"),
            *common,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"shiftwatch check: error: {tmp_path / 'none.pt'}: not found; run `dvc repro train` or pass --model"
    ]


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "check" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main([])  # a command is required
    assert exited.value.code == 2


EXITING = """
import atexit, sys, threading, time
from pathlib import Path
from shiftwatch.__main__ import entry_point

folder, wait_for_thread = Path(sys.argv[1]), sys.argv[2] == "thread"


class TornDown:  # its __del__ runs in the interpreter's teardown, which the fast exit skips
    def __del__(self):
        (folder / "teardown").write_text("ran")


def late():
    time.sleep(0.5)
    (folder / "thread").write_text("finished")


kept = TornDown()
atexit.register(lambda: (folder / "atexit").write_text("ran"))
if wait_for_thread:
    threading.Thread(target=late).start()
sys.stdout.write("x" * 200_000)  # more than a pipe holds: all of it must reach the reader
sys.argv = ["shiftwatch", "check", str(folder / "missing.npy")]
entry_point()
"""


@pytest.mark.parametrize("thread", ["none", "thread"])
def test_the_fast_exit_keeps_the_status_atexit_handlers_threads_and_output(tmp_path, thread):
    """entry_point ends with os._exit (no interpreter teardown: ~1 s of a cold check) unless a
    non-daemon thread still runs; either way the status, the atexit handlers and every byte
    written to stdout survive."""
    result = subprocess.run(
        [sys.executable, "-c", EXITING, str(tmp_path), thread],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr  # bad input: no params.yaml, no batch
    assert result.stdout == "x" * 200_000
    assert len(result.stderr.strip().splitlines()) == 1 and "shiftwatch check: error:" in result.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    if thread == "thread":  # waited for, then the usual exit, teardown included
        assert (tmp_path / "thread").read_text() == "finished"
        assert (tmp_path / "teardown").exists()
    else:
        assert not (tmp_path / "teardown").exists()


def test_a_report_that_cannot_be_written_to_stdout_exits_2_with_one_line(tmp_path):
    """Disk full on stdout (/dev/full): the fast exit must not let a gate pass on a cut report."""
    script = "import sys; from shiftwatch.__main__ import exit_now; print('report'); exit_now(0)"
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # the report waits in the buffer
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-c", script], stdout=full, stderr=subprocess.PIPE, text=True, env=buffered, timeout=60
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "shiftwatch: error: standard output: cannot write (No space left on device)"
    ]


@pytest.mark.parametrize("unbuffered", ["1", None])
def test_a_check_whose_report_cannot_reach_stdout_exits_2_with_one_line(project, unbuffered):
    """Unbuffered (PYTHONUNBUFFERED), the print itself fails inside `check`; buffered, the flush
    at exit does. Either way one line and status 2, not a traceback and 1 (a page)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    files = {"--model": "resnet18.pt", "--reference": "test.npz", "--params": "params.yaml"}
    files.update({"--estimator": "estimator.json", "--finetuned": "finetuned.pt"})
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "shiftwatch", "check", "bright.npy", *(x for pair in files.items() for x in pair)],
            cwd=project,
            env=env,
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    where = "shiftwatch check: error: standard output" if unbuffered else "shiftwatch: error: standard output"
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{where}: cannot write (No space left on device)"]


def test_log_creates_one_mlflow_run_with_the_metrics(project, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from shiftwatch.tracking.store import CHECKS_EXPERIMENT, EXPERIMENT

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bright.json"
    called_ms = int(time.time() * 1000)
    assert (
        check(project, project / "bright.npy", "--json", out, "--html", tmp_path / "bright.html", "--log", "--quiet")
        == 0
    )
    returned_ms = time.time() * 1000
    report = json.loads(out.read_text())

    client = MlflowClient(uri)
    assert client.get_experiment_by_name(EXPERIMENT) is None  # checks stay out of the pipeline's runs
    experiment = client.get_experiment_by_name(CHECKS_EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    # the run lasts as long as the check did (it was the logging's 0.36 s after a 14 s check)
    assert called_ms <= run.info.start_time <= run.info.end_time <= returned_ms
    assert run.info.end_time - run.info.start_time >= report["seconds"]["total"] * 1000
    assert run.data.tags["dvc.stage"] == "check" and run.data.tags["shiftwatch.role"] == "check"
    assert run.data.tags["shiftwatch.verdict"] == "ALERT" and run.data.tags["shiftwatch.page"] == "ok"
    metrics = run.data.metrics
    assert metrics["check.drift"] == 1 and metrics["check.harmful"] == 0 and metrics["check.batch.images"] == 200
    assert metrics["check.estimate.loss_points"] == pytest.approx(report["estimate"]["loss_points"])
    assert metrics["check.tests.image_stats.pvalue"] == pytest.approx(report["tests"]["image_stats"]["pvalue"])
    assert metrics["check.accuracy.atc"] == pytest.approx(report["accuracy"]["atc"])
    assert metrics["check.label_shift.bbse.class_7"] == pytest.approx(report["label_shift"]["bbse"][7])
    assert run.data.params["monitor.alpha"] == "0.05" and run.data.params["shift.label_class"] == "7"
    logged = client.download_artifacts(run.info.run_id, "check.json", str(tmp_path))
    assert json.loads(Path(logged).read_text())["tests"] == report["tests"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"check.json", "bright.html", "figures"} <= artifacts
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"mean_pixel.png", "confidence.png", "samples.png"}
    # Lineage: the batch and the reference as dataset inputs, by md5; the model by md5.
    inputs = {d.dataset.name: (d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert inputs == {
        str(project / "bright.npy"): (file_md5(project / "bright.npy"), "check"),
        str(project / "test.npz"): (file_md5(project / "test.npz"), "reference"),
    }
    assert run.data.tags["shiftwatch.model_md5"] == file_md5(project / "resnet18.pt")


def test_json_dash_writes_only_the_report_to_standard_output(project, capsys):
    assert check(project, project / "bright.npy", "--json", "-") == 0
    printed = capsys.readouterr().out
    report = json.loads(printed)  # nothing but the JSON on stdout
    assert report["verdict"] == "ALERT" and list(report["tests"]) == list(FEATURE_DETECTORS)


def test_html_report_is_self_contained_and_says_the_verdict_first(project, tmp_path):
    out = tmp_path / "report.html"
    assert check(project, project / "bright.npy", "--html", out, "--quiet") == 0
    page = out.read_text()
    assert page.index("ok: the model is not hurt: estimated accuracy") < page.index("changed: yes: ")
    assert "images brighter" in page
    assert page.index("changed: yes") < page.index('id="advice"') < page.index("<h2>Change detectors")
    assert all(name in page for name in FEATURE_DETECTORS + DIAGNOSTIC_DETECTORS)
    assert page.count('src="data:image/png;base64,') == 3  # two histograms and the sample grid
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "Sneaker" in page and 'id="trust"' in page and 'id="accuracy"' in page


def test_html_to_a_folder_is_refused_before_any_work(project, tmp_path, capsys):
    assert check(project, project / "clean.npy", "--html", tmp_path) == 2
    assert "--html" in capsys.readouterr().err and not list(tmp_path.glob("*.html"))


def _file_in_the_way(tmp_path: Path) -> tuple[Path, str]:
    """An output path whose folder cannot be made: a file holds its name."""
    (tmp_path / "reports").write_text("a file, not a folder\n")
    return tmp_path / "reports" / "day1" / "check.out", f"{tmp_path / 'reports'} is a file, not a folder"


def _read_only_folder(tmp_path: Path) -> tuple[Path, str]:
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder")
    (tmp_path / "reports").mkdir(mode=0o555)
    return tmp_path / "reports" / "check.out", "Permission denied"


@pytest.mark.parametrize("fault", [_file_in_the_way, _read_only_folder])
@pytest.mark.parametrize("option", ["--json", "--html"])
def test_an_unwritable_output_is_refused_before_the_check_naming_the_users_path(
    project, tmp_path, capsys, monkeypatch, option, fault
):
    # given an output path that cannot be written, and a check that must not start
    out, cause = fault(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr("shiftwatch.commands.check.check_batch", lambda *a, **k: pytest.fail("the check ran"))
    # when
    started = time.perf_counter()
    code = check(project, project / "clean.npy", option, out)
    # then: one line naming the path the user gave, at once, and nothing left behind
    assert code == 2 and time.perf_counter() - started < 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"shiftwatch check: error: {option} {out}: cannot write ({cause}); pick a writable path\n"
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium not installed: apt-get install chromium (.ci/run does)"
)
def test_html_report_renders_in_headless_chromium(project, tmp_path):
    out = tmp_path / "report.html"
    assert check(project, project / "clean.npy", "--html", out, "--quiet") == 0
    browser = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run([*browser, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'id="verdict"' in dom.stdout and "ok: the model is not hurt" in dom.stdout
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1200,1600", out.as_uri()], capture_output=True, timeout=120
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # a page was drawn, not a blank
    # the green verdict banner is at the top: look for it in the first 200 rows
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)[:200]
    assert np.any((rgb[..., 1] > 100) & (rgb[..., 0] < 60) & (rgb[..., 2] < 80))


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium not installed: apt-get install chromium (.ci/run does)"
)
def test_a_paging_html_report_shows_page_estimate_change_and_advice_above_the_fold(project, tmp_path):
    """At 1280x800, the banner (page and estimate), the change line and the advice all end
    above the fold: measured by the browser's own layout, read back through the DOM."""
    out = tmp_path / "page.html"
    assert (
        check(
            project, project / "clean.npy", "--estimator", project / "paging_estimator.json", "--html", out, "--quiet"
        )
        == 1
    )
    probe = tmp_path / "probe.html"
    probe.write_text(
        out.read_text().replace(
            "</body>",
            (
                "<script>document.body.setAttribute('data-bottoms', JSON.stringify(['verdict', 'change', 'advice']"
                ".map(id => document.getElementById(id).getBoundingClientRect().bottom)));</script></body>"
            ),
        )
    )
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1280,800",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "PAGE: the model is hurt" in dom.stdout and "review the low-confidence predictions" in dom.stdout
    bottoms = json.loads(dom.stdout.split('data-bottoms="', 1)[1].split('"', 1)[0].replace("&quot;", '"'))
    assert len(bottoms) == 3 and all(0 < bottom <= 800 for bottom in bottoms), bottoms
