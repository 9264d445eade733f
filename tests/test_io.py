import json
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shiftwatch import ShiftwatchError
from shiftwatch.core.io import (
    ImageSet,
    Predictions,
    atomic_folder,
    atomic_path,
    load_predictions,
    load_set,
    rows_matching,
    save_predictions,
    save_set,
    write_json,
)


def _set(n=5):
    rng = np.random.default_rng(0)
    return ImageSet(rng.random((n, 28, 28)).astype(np.float32), np.arange(n) % 10, np.arange(n) * 3)


def test_save_and_load_roundtrip_float_and_uint8(tmp_path):
    image_set = _set()
    save_set(tmp_path / "a.npz", image_set)
    loaded = load_set(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded.images, image_set.images)
    np.testing.assert_array_equal(loaded.source_index, image_set.source_index)
    save_set(tmp_path / "b.npz", image_set, as_uint8=True)
    assert np.abs(load_set(tmp_path / "b.npz").images - image_set.images).max() <= 0.5 / 255 + 1e-7


def test_missing_corrupt_and_wrong_shape_files_are_clear_errors(tmp_path):
    with pytest.raises(ShiftwatchError, match="not found; run `dvc repro prepare`"):
        load_set(tmp_path / "nope.npz", hint="run `dvc repro prepare`")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ShiftwatchError, match="unreadable or corrupt"):
        load_set(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", images=np.zeros((2, 32, 32)), labels=np.zeros(2, int), source_index=np.arange(2))
    with pytest.raises(ShiftwatchError, match=r"expected \(N, 28, 28\)"):
        load_set(tmp_path / "shape.npz")
    np.savez(
        tmp_path / "nan.npz", images=np.full((2, 28, 28), np.nan), labels=np.zeros(2, int), source_index=np.arange(2)
    )
    with pytest.raises(ShiftwatchError, match="not finite"):
        load_set(tmp_path / "nan.npz")


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert list((tmp_path / "out").iterdir()) == []
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")


def test_rows_matching_finds_subset_rows_and_rejects_strangers():
    parent = np.array([10, 3, 7, 42])
    np.testing.assert_array_equal(rows_matching(np.array([3, 42]), parent), [1, 3])
    with pytest.raises(ShiftwatchError, match="not in its parent set"):
        rows_matching(np.array([5]), parent)


def test_predictions_roundtrip(tmp_path):
    probabilities = np.eye(10, dtype=np.float32)[[3, 7]]
    save_predictions(tmp_path / "p.npz", Predictions(probabilities, np.array([3, 1]), np.array([0, 1])))
    loaded = load_predictions(tmp_path / "p.npz", hint="x")
    np.testing.assert_array_equal(loaded.predicted, [3, 7])
    np.testing.assert_array_equal(loaded.subset(np.array([1])).labels, [1])


def test_written_files_keep_the_users_umask(tmp_path):
    """Not the temporary file's 0600: a teammate or a web server reads what the umask allows."""
    script = (
        f"import os; os.umask(0o027)\n"
        f"from shiftwatch.core.io import atomic_folder, write_json\n"
        f"write_json({str(tmp_path / 'a.json')!r}, {{}})\n"
        f"with atomic_folder({str(tmp_path / 'sets')!r}) as folder:\n"
        f"    write_json(folder / 'b.json', {{}})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "sets").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "sets" / "b.json").stat().st_mode) == 0o640


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    sets = tmp_path / "shifted"
    with atomic_folder(sets) as folder:
        write_json(folder / "b_raw.json", {"v": 1})
        write_json(folder / "b_shift.json", {"v": 1})
    with pytest.raises(RuntimeError), atomic_folder(sets) as folder:
        write_json(folder / "b_raw.json", {"v": 2})
        raise RuntimeError("the second set failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shifted"]  # no staging folder left
    assert sorted(p.name for p in sets.iterdir()) == ["b_raw.json", "b_shift.json"]
    assert json.loads((sets / "b_raw.json").read_text()) == {"v": 1}
    with atomic_folder(sets) as folder:
        write_json(folder / "b_raw.json", {"v": 3})
    assert [p.name for p in sets.iterdir()] == ["b_raw.json"]  # the new folder, not a merge


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill, as a disk-full write

    return apply


def test_a_write_past_the_limit_is_one_line_naming_the_file(tmp_path):
    target = tmp_path / "big.npz"
    write_json(target, {"previous": True})
    script = (
        "import numpy as np\n"
        "from shiftwatch.core.io import ImageSet, save_set\n"
        f"save_set({str(target)!r}, ImageSet(np.zeros((1000, 28, 28), np.float32), np.zeros(1000, int), "
        "np.arange(1000)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=_limit_file_size(100_000)
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"shiftwatch.ShiftwatchError: cannot write {target}: larger than the file-size limit (ulimit -f); "
        "raise it and rerun (nothing half-written is left)"
    )
    assert json.loads(target.read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir()] == ["big.npz"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_full_disk_is_one_line_naming_the_target(tmp_path):
    """ENOSPC for real: /dev/full refuses every write with it."""
    target = tmp_path / "b_covariate.npz"
    with pytest.raises(ShiftwatchError) as raised, atomic_path(target), open("/dev/full", "wb") as full:
        full.write(b"\0" * 4096)
        full.flush()
    assert str(raised.value) == (
        f"cannot write {target}: no space left on the device; free some and rerun (nothing half-written is left)"
    )
    assert list(tmp_path.iterdir()) == []
