import pytest
import yaml

from shiftwatch import ShiftwatchError
from shiftwatch.params import Params, load_params, parse_params

from conftest import REPO


def test_repo_params_yaml_is_valid_and_reproduces_the_study():
    params = load_params(REPO / "params.yaml")
    assert params.seed == 42
    assert params.data.domain_b_fraction == 0.3
    assert (params.shift.downsample, params.shift.brightness) == (7, 0.1)
    assert (params.shift.label_class, params.shift.label_keep) == (7, 0.1)
    assert (params.train.epochs, params.train.lr, params.train.weights) == (3, 1e-4, "none")


def test_repo_params_yaml_sets_every_key_the_schema_knows():
    # A key only in the schema's defaults could not be changed with `dvc exp run -S`.
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(parse_params(raw).flat()) == set(Params().flat())
    assert set(_flat_keys(raw)) == set(Params().flat())


def _flat_keys(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@pytest.mark.parametrize("section, key, value, expected", [
    ("shift", "brightness", 1.5, "shift.brightness = 1.5 is not allowed: input should be less than or equal to 1"),
    ("shift", "downsample", 0, "shift.downsample = 0 is not allowed: input should be greater than or equal to 1"),
    ("shift", "label_keep", -0.1, "shift.label_keep = -0.1"),
    ("shift", "label_class", 10, "shift.label_class = 10"),
    ("train", "epochs", 0, "train.epochs = 0"),
    ("train", "weights", "resnet", "train.weights = 'resnet'"),
])
def test_bad_value_names_key_value_and_allowed_range(section, key, value, expected):
    raw = Params().model_dump()
    raw[section][key] = value
    with pytest.raises(ShiftwatchError) as err:
        parse_params(raw)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_unknown_key_is_an_error():
    raw = Params().model_dump()
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
    flat = Params().flat("seed", "shift.label_class", "detect")
    assert flat["seed"] == 42 and flat["shift.label_class"] == 7
    assert "shift.brightness" not in flat
    assert flat["detect.thresholds.alpha"] == 0.05
