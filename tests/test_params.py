import pytest
import yaml
from conftest import REPO
from pydantic import BaseModel

from shiftwatch import ShiftwatchError
from shiftwatch.core.params import Params, _setting_keys, load_params, parse_params


def _committed() -> dict:
    """The repository's params.yaml as a fresh mapping: the only complete set of values."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_yaml_is_valid_and_reproduces_the_study():
    params = load_params(REPO / "params.yaml")
    assert params.seed == 42
    assert params.data.domain_b_fraction == 0.3
    assert (params.shift.downsample, params.shift.brightness) == (7, 0.1)
    assert (params.shift.label_class, params.shift.label_keep) == (7, 0.1)
    assert (params.train.epochs, params.train.lr, params.train.weights) == (3, 1e-4, "none")


def test_the_schema_has_no_defaults_so_params_yaml_is_the_one_source():
    # A default beside params.yaml would be a second value that `dvc exp run -S` cannot reach.
    def defaults(model, prefix=""):
        for name, field in model.model_fields.items():
            if not field.is_required():
                yield f"{prefix}{name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from defaults(field.annotation, f"{prefix}{name}.")

    assert list(defaults(Params)) == []
    raw = _committed()
    assert set(_flat_keys(raw)) == set(parse_params(raw).flat())


@pytest.mark.parametrize("key", _setting_keys(Params))
def test_every_key_left_out_is_named_in_one_line_that_says_to_add_it(key):
    raw = _committed()
    *sections, name = key.split(".")
    section = raw
    for part in sections:
        section = section[part]
    del section[name]
    with pytest.raises(ShiftwatchError) as err:
        parse_params(raw)
    assert str(err.value).startswith(f"params.yaml: {key} is not set; add it to params.yaml")
    assert "\n" not in str(err.value)


def _flat_keys(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("shift", "brightness", 1.5, "shift.brightness = 1.5 is not allowed: input should be less than or equal to 1"),
        ("shift", "downsample", 0, "shift.downsample = 0 is not allowed: input should be greater than or equal to 1"),
        ("shift", "label_keep", -0.1, "shift.label_keep = -0.1"),
        ("shift", "label_class", 10, "shift.label_class = 10"),
        ("train", "epochs", 0, "train.epochs = 0"),
        ("train", "weights", "resnet", "train.weights = 'resnet'"),
    ],
)
def test_bad_value_names_key_value_and_allowed_range(section, key, value, expected):
    raw = _committed()
    raw[section][key] = value
    with pytest.raises(ShiftwatchError) as err:
        parse_params(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_is_an_error():
    raw = _committed()
    raw["shift"]["brightnes"] = 0.2
    with pytest.raises(ShiftwatchError, match=r"unknown key 'shift.brightnes'"):
        parse_params(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ShiftwatchError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("shift: [unclosed\n")
    with pytest.raises(ShiftwatchError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_flat_keys_are_dotted_and_filtered_by_prefix():
    flat = parse_params(_committed()).flat("seed", "shift.label_class", "detect")
    assert flat["seed"] == 42 and flat["shift.label_class"] == 7
    assert "shift.brightness" not in flat
    assert flat["detect.thresholds.alpha"] == 0.05


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("shift", "downsample", True),
        ("shift", "label_keep", True),
        ("shift", "brightness", False),
        ("mitigate", "augment_downsample", [28, True]),
    ],
)
def test_a_yaml_boolean_is_never_read_as_a_number(section, key, value):
    raw = _committed()
    raw[section][key] = value
    with pytest.raises(ShiftwatchError, match=f"{section}.{key} = .* is a boolean") as err:
        parse_params(raw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_float_settings_must_be_finite(value):
    raw = _committed()
    raw["detect"]["smoothing"] = value
    with pytest.raises(ShiftwatchError, match="detect.smoothing"):
        parse_params(raw)


def test_a_deleted_section_stops_the_stage_naming_its_first_key(tmp_path):
    raw = _committed()
    del raw["monitor"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(
        ShiftwatchError,
        match=r"monitor\.alpha is not set \(nor 4 other keys\); add it to "
        r"params\.yaml",
    ):
        load_params(tmp_path / "params.yaml")


def test_a_misspelt_key_is_named_as_unknown_not_as_missing():
    raw = _committed()
    raw["shift"]["brightnes"] = raw["shift"].pop("brightness")
    with pytest.raises(ShiftwatchError, match=r"unknown key 'shift\.brightnes'"):
        parse_params(raw)


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 42\nshift:\n  brightness: [0.1\n  downsample: 7\n")
    with pytest.raises(ShiftwatchError, match=r"not valid YAML at line \d+, column \d+") as err:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(err.value)


def _with_a_second_brightness(tmp_path):
    """The repository's params.yaml with `brightness: 0.5` added again under shift; its lines."""
    lines = (REPO / "params.yaml").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith("brightness:"))
    lines.insert(first + 1, "  brightness: 0.5")
    (tmp_path / "params.yaml").write_text("\n".join(lines) + "\n")
    return first + 1, first + 2


def test_a_key_set_twice_is_refused_naming_it_and_both_lines(tmp_path):
    # PyYAML alone keeps the last value silently; dvc repro refuses the file.
    assert yaml.safe_load((REPO / "params.yaml").read_text())["shift"]["brightness"] == 0.1
    first, second = _with_a_second_brightness(tmp_path)
    with pytest.raises(ShiftwatchError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value) == (
        f"{tmp_path / 'params.yaml'}: key 'shift.brightness' is set twice, at lines "
        f"{first} and {second}; keep one of them (dvc repro refuses the file too)"
    )


@pytest.mark.slow  # seconds, not milliseconds: `make test-fast` leaves it out
def test_a_stage_run_by_hand_refuses_a_key_set_twice_and_writes_nothing(tmp_path):
    import os
    import subprocess
    import sys

    first, second = _with_a_second_brightness(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "stages.shift"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"shiftwatch shift: error: params.yaml: key 'shift.brightness' is set twice, at lines {first} and "
        f"{second}; keep one of them (dvc repro refuses the file too)"
    ]
    # no pipeline output (the MLflow helper, forked at start-up to overlap imports, may open mlflow.db)
    assert not (tmp_path / "data").exists() and not (tmp_path / "metrics").exists()


def test_ctrl_c_in_a_stage_is_one_line_and_exit_130(capsys):
    from shiftwatch.core.stage import run_stage

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exited:
        run_stage("power", interrupted)
    assert exited.value.code == 130
    assert capsys.readouterr().err == "shiftwatch power: interrupted; no output is half-written, rerun the stage\n"


def test_the_schema_takes_its_corruption_families_from_the_corruption_table():
    """One list of family names (data/corruptions.py); the schema refuses any other, naming them."""
    import typing

    from shiftwatch.core.params import HarmParams, PowerParams
    from shiftwatch.data.corruptions import FAMILIES

    def keys(model, field):
        return typing.get_args(typing.get_args(model.model_fields[field].annotation)[0])

    assert keys(PowerParams, "corruptions") == FAMILIES
    assert keys(HarmParams, "design") == (*FAMILIES, "brightness", "downsample", "label_keep")
    raw = _committed()
    raw["power"]["corruptions"] = {"fog": [1]}
    with pytest.raises(ShiftwatchError, match=r"power\.corruptions\.fog.* 'fog' is not allowed: .*'contrast'"):
        parse_params(raw)


def test_check_outside_the_repository_needs_a_complete_params_file(tmp_path, monkeypatch, capsys):
    """`shiftwatch check` has no defaults to fall back on either: without a repository it asks
    for --params, and a file that lacks a key stops it (exit 2) before the model is loaded."""
    import numpy as np

    from shiftwatch.__main__ import main

    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "batch.npy", np.zeros((5, 28, 28), np.float32))
    argv = ["check", "batch.npy", "--json", "out.json"]
    assert main(argv) == 2
    assert "params.yaml: not found; run inside the repository" in capsys.readouterr().err
    raw = _committed()
    del raw["monitor"]["alpha"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(raw))
    assert main([*argv, "--params", "mine.yaml"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "shiftwatch check: error: mine.yaml: monitor.alpha is not set; add it to params.yaml (every key is "
        "required: `git show HEAD:params.yaml` has them all)"
    ]
    assert not (tmp_path / "out.json").exists()
