"""The schema of params.yaml: unknown keys, missing keys and out-of-range values are errors.

Every value lives in params.yaml only: the schema gives each key's type and range, never a
default, so a key the file does not set cannot run on a second, unseen value. `load_params()`
returns a validated `Params`; a bad file raises `ShiftwatchError` with one line naming the key
and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shiftwatch import ShiftwatchError
from shiftwatch.data.corruptions import FAMILIES


class _Strict(BaseModel):
    # allow_inf_nan=False: a float setting must be finite (`detect.smoothing: .inf` turned KL into NaN).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataParams(_Strict):
    source: str | None
    domain_b_fraction: float = Field(gt=0, lt=1)
    max_train_images: int | None = Field(ge=20, le=60_000)
    max_test_images: int | None = Field(ge=10, le=10_000)


class ShiftParams(_Strict):
    downsample: int = Field(ge=1, le=28)
    brightness: float = Field(ge=-1, le=1)
    label_class: int = Field(ge=0, le=9)
    label_keep: float = Field(ge=0, le=1)


class Thresholds(_Strict):
    alpha: float = Field(gt=0, lt=1)
    kl: float = Field(ge=0)
    auc: float = Field(ge=0.5, le=1)


class DetectParams(_Strict):
    bins: int = Field(ge=2, le=10_000)
    smoothing: float = Field(gt=0)
    classifier_samples: int = Field(ge=10)
    thresholds: Thresholds


class TrainParams(_Strict):
    seed: int = Field(ge=0, le=2**32 - 1)
    weights: Literal["none", "imagenet"]
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=65_536)
    lr: float = Field(gt=0, le=1)
    precision: Literal["auto", "fp32"]


class EvaluateParams(_Strict):
    batch_size: int = Field(ge=1, le=65_536)
    precision: Literal["auto", "fp32"]


class MonitorParams(_Strict):
    alpha: float = Field(gt=0, lt=1)
    mmd_permutations: int = Field(ge=10, le=10_000)
    mmd_max_per_side: int | None = Field(ge=10, le=60_000)
    classifier_samples: int = Field(ge=10)
    trust_tolerance: float = Field(gt=0, le=1)


# The corruption families are the corruption table's (data/corruptions.py), named once there.
_CorruptionFamily = Literal[FAMILIES]  # type: ignore[valid-type]  # built at import: mypy sees no literals
_Sizes = Annotated[list[Annotated[int, Field(ge=2, le=30_000)]], Field(min_length=1)]
_RepetitionsFrom = dict[Annotated[int, Field(ge=2)], Annotated[int, Field(ge=1)]]  # {from n: repetitions}
_Severities = list[Annotated[float, Field(gt=0, le=180)]]


class PowerParams(_Strict):
    repetitions: int = Field(ge=1, le=100_000)
    detection_repetitions: int = Field(ge=1, le=100_000)
    sizes: _Sizes
    brightness_levels: list[Annotated[float, Field(ge=-1, le=1)]]
    downsample_levels: list[Annotated[int, Field(ge=1, le=28)]]
    label_keep_levels: list[Annotated[float, Field(ge=0, le=1)]]
    mmd_permutations: int = Field(ge=10, le=10_000)
    mmd_repetitions: _RepetitionsFrom
    diagnostic_repetitions: _RepetitionsFrom
    corruptions: dict[_CorruptionFamily, _Severities]
    corruption_sizes: _Sizes
    corruption_pool_images: int = Field(ge=20, le=28_000)
    corruption_repetitions: int = Field(ge=1, le=100_000)
    monitored_reference: int | None = Field(ge=10, le=28_000)
    monitored_sizes: _Sizes
    harm_points: float = Field(gt=0, le=100)
    harm_n: int = Field(ge=2, le=30_000)

    @model_validator(mode="after")
    def _harm_n_is_measured(self):
        if self.corruptions and self.harm_n not in self.corruption_sizes:
            raise ValueError(f"harm_n = {self.harm_n} must be one of corruption_sizes {self.corruption_sizes}")
        return self


# Families a harm cell may use: the corruption library's, the study's two covariate shifts and
# the label shift (severity: the share of shift.label_class kept).
_HarmFamily = Literal[(*FAMILIES, "brightness", "downsample", "label_keep")]  # type: ignore[valid-type]


class HarmParams(_Strict):
    signals: list[Literal["confidence", "atc", "agreement", "soft_agreement", "class_mix", "clear_border"]] = Field(
        min_length=1
    )
    harm_points: float = Field(gt=0, le=100)
    page_points: float = Field(gt=0, le=100)
    reference_images: int = Field(ge=10, le=28_000)
    sizes: list[Annotated[int, Field(ge=2, le=5_000)]] = Field(min_length=1)
    repetitions: int = Field(ge=1, le=100_000)
    null_repetitions: int = Field(ge=2, le=100_000)
    change_sizes: list[Annotated[int, Field(ge=2, le=5_000)]]
    change_repetitions: int = Field(ge=1, le=100_000)
    change_first_look: int = Field(ge=1, le=100_000)
    design: dict[_HarmFamily, _Severities] = Field(min_length=1)
    held_out: dict[_HarmFamily, _Severities]
    everyday: dict[_HarmFamily, _Severities]

    @model_validator(mode="after")
    def _page_below_harm(self):
        if self.page_points > self.harm_points:
            raise ValueError(
                f"page_points = {self.page_points} must not exceed harm_points = {self.harm_points} "
                "(a batch that loses harm_points must page)"
            )
        if set(self.change_sizes) - set(self.sizes):
            raise ValueError(
                f"change_sizes = {self.change_sizes}: the change verdict runs on the page's draws, "
                f"so each of its sizes must be in sizes = {self.sizes}"
            )
        if not self.change_first_look <= self.change_repetitions <= self.repetitions:
            raise ValueError(
                f"change_first_look = {self.change_first_look}, change_repetitions = "
                f"{self.change_repetitions}, repetitions = {self.repetitions}: the change verdict "
                "runs on the first of the page's draws, so each must be at most the next"
            )
        overlap = set(self.held_out) & set(self.design)
        if overlap:
            raise ValueError(
                f"held_out families {sorted(overlap)} are design families too; a family is "
                "held out only if no fit sees it"
            )
        return self


class MitigateParams(_Strict):
    finetune_epochs: int = Field(ge=1, le=100)
    augment_downsample: list[Annotated[int, Field(ge=1, le=28)]] = Field(min_length=1)
    augment_brightness: tuple[Annotated[float, Field(ge=-1, le=1)], Annotated[float, Field(ge=-1, le=1)]]
    oversample_factor: int = Field(ge=1, le=100)
    adabn_images: int = Field(ge=10, le=60_000)
    review_threshold: float = Field(ge=0, le=1)


class RegistryParams(_Strict):
    # MLflow's rules for a registered model name, kept simple enough for a models:/ URI.
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    champion_tolerance_points: float = Field(ge=0, le=100)
    # Who may move @champion: only runs in the workspace (`dvc repro`), or DVC experiments too.
    promote_from: Literal["workspace", "any"]


class Params(_Strict):
    seed: int = Field(ge=0, le=2**32 - 1)
    data: DataParams
    shift: ShiftParams
    detect: DetectParams
    train: TrainParams
    evaluate: EvaluateParams
    monitor: MonitorParams
    power: PowerParams
    harm: HarmParams
    mitigate: MitigateParams
    registry: RegistryParams

    def flat(self, *sections: str) -> dict[str, object]:
        """Dotted keys as DVC shows them ({'shift.brightness': 0.1, ...}), for MLflow.

        With `sections`, only the keys under those (dotted) prefixes: the ones a stage
        declares in dvc.yaml, e.g. ("seed", "shift.label_class").
        """
        return {
            k: v
            for k, v in flatten_params(self.model_dump()).items()
            if not sections or any(k == s or k.startswith(f"{s}.") for s in sections)
        }


def flatten_params(tree: dict, prefix: str = "") -> dict[str, object]:
    """A nested params mapping (validated or raw YAML) as dotted keys: {'shift.brightness': 0.1}."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_params(raw: object, origin: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ShiftwatchError with one line on the first problem.

    No setting may be a YAML boolean (pydantic would read `true` as 1 or 1.0; there are no
    boolean settings). Every key of the schema must be set: a misspelt key is named as unknown
    before the key it was meant to be is named as missing, and a missing section by its first key."""
    if not isinstance(raw, dict):
        raise ShiftwatchError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in flatten_params(raw).items():
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise ShiftwatchError(
                f"{origin}: {key} = {value!r} is a boolean; give a number or a name "
                "(see the comment beside it in params.yaml)"
            )
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ShiftwatchError(_one_line(err, origin, raw)) from None


def _not_set(origin: str, key: str, others: int = 0) -> str:
    nor = f" (nor {others} other key{'s' if others > 1 else ''})" if others else ""
    return (
        f"{origin}: {key} is not set{nor}; add it to params.yaml (every key is required: "
        "`git show HEAD:params.yaml` has them all)"
    )


def _setting_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of every setting: sections recurse, anything else (numbers, lists, free
    mappings such as power.corruptions) is one setting."""
    keys = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys += _setting_keys(kind, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _has(tree: object, path: list[str]) -> bool:
    for part in path:
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def _one_line(err: ValidationError, origin: str, raw: dict) -> str:
    problems = err.errors()
    first = next(
        (p for p in problems if p["type"] == "extra_forbidden"),
        next((p for p in problems if p["type"] == "missing"), problems[0]),
    )
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'; remove it or fix its spelling (allowed keys: see params.yaml)"
    if first["type"] == "missing":  # named by setting, not section: `monitor.alpha`, not `monitor`
        missing = [name for name in _setting_keys(Params) if not _has(raw, name.split("."))] or [key]
        return _not_set(origin, missing[0], len(missing) - 1)
    value = first.get("input")
    allowed = first["msg"][0].lower() + first["msg"][1:]
    return f"{origin}: {key} = {value!r} is not allowed: {allowed}"


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ShiftwatchError(f"{path}: not found; run from the repository root") from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader), [])
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ShiftwatchError(f"{path}: not valid YAML{where}: {problem}") from None
    if duplicate:
        raise ShiftwatchError(f"{path}: {duplicate}; keep one of them (dvc repro refuses the file too)")
    return parse_params(raw, str(path))


def _duplicate_key(node, path: list[str]) -> str | None:
    """The first key set twice in one mapping, with its dotted name and both lines. PyYAML
    keeps the last value without a word; DVC refuses such a file, so a stage run by hand must
    refuse it too, or it would run on a value `dvc repro` never accepts."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in seen:
                return f"key '{'.'.join([*path, key])}' is set twice, at lines {seen[key]} and {line}"
            seen[key] = line
            found = _duplicate_key(value_node, [*path, key])
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item, path)
            if found:
                return found
    return None
