"""dvc.yaml's deps cannot drift from the code: each stage lists exactly the shiftwatch modules
its script imports, directly or through other modules (a module missing from deps means
stale results after an edit; a module listed but not imported means needless reruns)."""
import ast
from pathlib import Path

import yaml
from conftest import REPO

# Modules that cannot change a stage's results: where and how it logs to MLflow, how its errors
# are printed, and the params schema (it only validates: the values a stage reads are declared
# under `params:` in dvc.yaml, and params.yaml sets every key, see the test below). Listing
# them would rerun training for an edit to an error message.
CANNOT_CHANGE_RESULTS = {"shiftwatch/tracking.py", "shiftwatch/cli.py", "shiftwatch/params.py"}


def _module_file(dotted: str) -> Path | None:
    parts = dotted.split(".")
    for candidate in (REPO.joinpath(*parts).with_suffix(".py"), REPO.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level (lazy) imports too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def shiftwatch_modules(script: Path) -> set[str]:
    """Repo-relative paths of every shiftwatch module `script` imports, transitively
    (importing a.b also runs a/__init__.py)."""
    seen: set[Path] = set()
    pending = [script]
    while pending:
        path = pending.pop()
        for name in _imported_names(path):
            if name.split(".")[0] != "shiftwatch":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = _module_file(".".join(parts[:i]))
                if found and found not in seen:
                    seen.add(found)
                    if found.relative_to(REPO).as_posix() not in CANNOT_CHANGE_RESULTS:
                        pending.append(found)
    return {p.relative_to(REPO).as_posix() for p in seen} - CANNOT_CHANGE_RESULTS


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _script(spec: dict) -> Path:
    module = spec["cmd"].split("-m", 1)[1].split()[0]
    return REPO / (module.replace(".", "/") + ".py")


def test_every_stage_lists_the_shiftwatch_modules_it_imports_and_no_others():
    problems = []
    for stage, spec in _stages().items():
        script = _script(spec)
        deps = set(spec["deps"])
        declared = {d for d in deps if d.startswith("shiftwatch/")}
        imported = shiftwatch_modules(script)
        if script.relative_to(REPO).as_posix() not in deps:
            problems.append(f"{stage}: its script {script.relative_to(REPO)} is not in deps")
        if imported - declared:
            problems.append(f"{stage}: imports but does not list {sorted(imported - declared)}")
        if declared - imported:
            problems.append(f"{stage}: lists but never imports {sorted(declared - imported)}")
    assert not problems, "\n".join(problems)


def test_the_check_follows_lazy_and_transitive_imports(tmp_path):
    # Given a script whose only shiftwatch import is inside a function, via a module that
    # itself imports another: both modules and the package __init__ are found.
    script = tmp_path / "script.py"
    script.write_text("def main():\n    from shiftwatch.evaluation_helpers import x\n")
    assert shiftwatch_modules(script) == {"shiftwatch/__init__.py"}  # no such module: only the package
    script.write_text("def main():\n    from shiftwatch.features import Features\n")
    assert shiftwatch_modules(script) == {  # features -> io, twosample -> detectors; model lazily
        "shiftwatch/__init__.py", "shiftwatch/features.py", "shiftwatch/io.py", "shiftwatch/model.py",
        "shiftwatch/twosample.py", "shiftwatch/detectors.py"}


def test_train_does_not_depend_on_inference_or_shift_settings():
    params = _stages()["train"]["params"]
    assert not any(str(p).startswith(("evaluate", "shift")) for p in params), params


def test_stages_run_once_per_model_read_no_shift_setting_but_the_label_class():
    for stage in ("reference", "finetune", "power"):
        spec = _stages()[stage]
        shift_keys = [p for p in spec["params"] if str(p).startswith("shift")]
        assert set(shift_keys) <= {"shift.label_class"}, (stage, shift_keys)
        assert not any(str(d).startswith("data/shifted") for d in spec["deps"]), stage


def test_params_yaml_sets_every_key_so_schema_defaults_cannot_change_results():
    # params.py is not a dependency of the stages; a default that params.yaml did not override
    # would change results unseen by DVC, so params.yaml must spell out every key.
    from shiftwatch.params import Params, _flatten

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(_flatten(raw)) == set(Params().flat())
