"""dvc.yaml cannot drift from the code: each stage lists exactly the shiftwatch modules its
script imports, directly or through other modules, and exactly the params keys it reads (a
module or key missing means stale results after an edit; one listed but unused means needless
reruns)."""

import ast
from pathlib import Path

import yaml
from conftest import REPO

# Modules that cannot change a stage's results: where and how it logs to MLflow (the package
# shiftwatch/tracking/, with the model registry it calls; the check does not follow tracking's own
# imports, which also include core/lineage.py for the md5s it logs), how its errors are printed
# (core/stage.py), and the params schema (core/params.py: it only validates; the values a stage
# reads are declared under `params:` in dvc.yaml, and params.yaml sets every key, see the test
# below). Listing them would rerun training for an edit to an error message. A stage that imports
# core/lineage.py itself (reference, which stores a model md5 in its output) must list it.
CANNOT_CHANGE_RESULTS = {
    "shiftwatch/tracking/__init__.py",
    "shiftwatch/tracking/store.py",
    "shiftwatch/tracking/dvc.py",
    "shiftwatch/tracking/runs.py",
    "shiftwatch/tracking/checks.py",
    "shiftwatch/tracking/registry.py",
    "shiftwatch/core/stage.py",
    "shiftwatch/core/params.py",
}


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


GATE = "validate"  # checks the whole params.yaml; its result is the schema's (core/params.py) verdict


def test_a_bad_params_yaml_stops_dvc_before_any_stage_removes_its_outputs():
    """DVC removes a stage's outputs before running it; every stage depends on the gate's
    output, so the gate (which reads every key) runs, and fails, first."""
    stages = _stages()
    assert stages[GATE]["params"] == [{"params.yaml": None}]  # every key of the file
    gate_output = next(iter(stages[GATE]["outs"][0]))
    assert [name for name, spec in stages.items() if name != GATE and gate_output not in spec["deps"]] == []


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
        imported = shiftwatch_modules(script) | ({"shiftwatch/core/params.py"} if stage == GATE else set())
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
    script.write_text("def main():\n    from shiftwatch.model.features import Features\n")
    assert shiftwatch_modules(script) == {  # features -> io, image_stats -> _arrays -> basic; network lazily
        "shiftwatch/__init__.py",
        "shiftwatch/model/__init__.py",
        "shiftwatch/model/features.py",
        "shiftwatch/core/__init__.py",
        "shiftwatch/core/io.py",
        "shiftwatch/model/network.py",
        "shiftwatch/detection/__init__.py",
        "shiftwatch/detection/image_stats.py",
        "shiftwatch/detection/_arrays.py",
        "shiftwatch/detection/basic.py",
    }


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
    # core/params.py is not a dependency of the stages; a default that params.yaml did not override
    # would change results unseen by DVC, so the schema has none and params.yaml spells out every key.
    from shiftwatch.core.params import flatten_params, load_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(flatten_params(raw)) == set(load_params(REPO / "params.yaml").flat())


# ---------------------------------------------------------------- params read vs declared


def _params_read(script: Path) -> set[str]:
    """The params.yaml keys `script` reads: attribute chains on the variable `params` (in any
    function of the script, helpers included) and on names assigned from it
    (`power = params.power`, `monitor, focus = params.monitor, params.shift.label_class`),
    each cut to the longest prefix that names a section or setting of the schema. A chain
    used whole (a section passed on) counts as reading the whole section."""
    from shiftwatch.core.params import Params, _setting_keys

    known = set(_setting_keys(Params))
    known |= {key.rsplit(".", i)[0] for key in known for i in range(1, key.count(".") + 1)}  # sections
    tree = ast.parse(script.read_text())
    aliases: dict[str, str] = {"params": ""}

    def chain(node) -> tuple[str, list[str]] | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in aliases:
            return node.id, parts[::-1]
        return None

    def key(root: str, parts: list[str]) -> str | None:
        full = [p for p in (aliases[root], *parts) if p]
        for end in range(len(full), 0, -1):
            if ".".join(full[:end]) in known:
                return ".".join(full[:end])
        return None

    definitions = set()  # the value nodes that define an alias: not reads themselves
    for node in ast.walk(tree):  # aliases first: `name = params.section`
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            for target, value in zip(targets, _assigned_values(node)):
                found = chain(value) if isinstance(target, ast.Name) else None
                if found and found[1] and key(*found) in known - set(_setting_keys(Params)):
                    aliases[target.id] = key(*found)
                    definitions.add(value)
    reads: set[str] = set()
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Attribute, ast.Name)) or isinstance(parents.get(node), ast.Attribute):
            continue  # only the outermost node of each chain
        if node in definitions or isinstance(getattr(node, "ctx", None), ast.Store):
            continue
        found = (
            chain(node)
            if isinstance(node, ast.Attribute)
            else ((node.id, []) if node.id in aliases and node.id != "params" else None)
        )
        if found is not None and (found_key := key(*found)) is not None:
            reads.add(found_key)
    return reads


def _assigned_values(assign: ast.Assign) -> list:
    if isinstance(assign.targets[0], ast.Tuple) and isinstance(assign.value, ast.Tuple):
        return list(assign.value.elts)
    return [assign.value]


def test_every_stage_declares_the_params_it_reads_and_reads_what_it_declares():
    problems = []
    for stage, spec in _stages().items():
        if stage == GATE:
            continue  # it reads the whole file: see the test below
        declared = {str(p) for p in spec.get("params", [])}
        read = _params_read(_script(spec))
        covered = lambda key: any(key == d or key.startswith(f"{d}.") for d in declared)
        unused = {
            d for d in declared if not any(r == d or r.startswith(f"{d}.") or d.startswith(f"{r}.") for r in read)
        }
        if {r for r in read if not covered(r)}:
            problems.append(f"{stage}: reads but does not declare {sorted(r for r in read if not covered(r))}")
        if unused:
            problems.append(f"{stage}: declares but never reads {sorted(unused)}")
    assert not problems, "\n".join(problems)


def test_the_params_check_sees_aliases_and_helpers(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "def main():\n"
        "    params = load_params()\n"
        "    power, focus = params.power, params.shift.label_class\n"
        "    use(power.sizes, params.seed)\n"
        "    helper(params)\n\n"
        "def helper(params):\n"
        "    return params.evaluate\n"
    )
    assert _params_read(script) == {"power.sizes", "shift.label_class", "seed", "evaluate"}


def test_the_power_plots_draw_every_registered_detector_and_the_verdict():
    """dvc.yaml's power plots name their columns by hand: they must be the columns the power
    stage writes, every registered detector then the combined verdict, in the registry's order."""
    from shiftwatch.detection.power import COMBINED
    from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS

    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    drawn = {
        path: columns
        for plot in plots
        if isinstance(plot, dict)
        for spec in plot.values()
        if isinstance(spec, dict) and isinstance(spec.get("y"), dict)
        for path, columns in spec["y"].items()
        if path.startswith("metrics/power/")
    }
    assert set(drawn) == {"metrics/power/label_keep_0.1.csv", "metrics/power/no_shift.csv"}
    for columns in drawn.values():
        assert columns == [*FEATURE_DETECTORS, *DIAGNOSTIC_DETECTORS, COMBINED]


def test_the_model_paths_are_one_constant_that_dvc_yaml_agrees_with():
    """The two networks' paths live in shiftwatch/model/__init__.py: the stage that writes each
    declares it as an output, and every stage script that names the constant depends on it."""
    from shiftwatch.model import DEPLOYED_MODEL, FINETUNED_MODEL

    stages = _stages()
    outputs = {
        name: {next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", [])}
        for name, spec in stages.items()
    }
    assert DEPLOYED_MODEL in outputs["train"] and FINETUNED_MODEL in outputs["finetune"]
    for name, spec in stages.items():
        script = _script(spec).read_text()
        for constant, path, writer in (
            ("DEPLOYED_MODEL", DEPLOYED_MODEL, "train"),
            ("FINETUNED_MODEL", FINETUNED_MODEL, "finetune"),
        ):
            if constant in script and name != writer:
                assert path in spec["deps"], f"stage {name} reads {path} but does not list it in dvc.yaml"
    assert not any('"models/resnet18' in _script(spec).read_text() for spec in stages.values())
