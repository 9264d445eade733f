"""docs/extending.md, performed: its steps for adding a detector and a corruption family are
applied literally, in order, to a throw-away copy of the repository, and the copy must pick the
new detector and family up wherever the page says it will. A page that drifts from the code (a
renamed decorator argument, a line its diff no longer finds, a step left out) fails here.

The page's convention (its opening comment): in the two "Adding" sections every fenced block is
a step. `python` blocks headed `# append to <file>` go at the end of that file after two blank
lines, `diff` blocks headed `--- <file>` replace each run of `-` lines (found exactly once) with
the `+` lines after it, `bash` blocks run in the repository root."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

PAGE = REPO / "docs" / "extending.md"
SECTIONS = ("Adding a detector", "Adding a corruption family")
# What the steps and the checks they run need: the package, its stages, tests and tools, the
# pages whose tables the tools regenerate, and the metrics those tables are made from.
COPIED = (
    "shiftwatch",
    "stages",
    "tests",
    "tools",
    "docs",
    "metrics",
    "benchmarks",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    "pytest.ini",
    "README.md",
)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _steps(section: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block under `## section`, in page order."""
    text = PAGE.read_text()
    heading = f"\n## {section}\n"
    assert heading in text, f"docs/extending.md has no section '## {section}'"
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return FENCE.findall(text[start:] if end == -1 else text[start:end])


def _edit(language: str, code: str, read) -> tuple[str, str]:
    """(path, its new text) after one edit step; `read(path)` gives the current text."""
    header, _, body = code.partition("\n")
    if language == "python":
        path = re.fullmatch(r"# append to (\S+)", header)
        assert path, f"a python step must start with '# append to <file>', not {header!r}"
        return path[1], read(path[1]).rstrip("\n") + "\n\n\n" + body
    if language == "diff":
        path = re.fullmatch(r"--- (\S+)", header)
        assert path, f"a diff step must start with '--- <file>', not {header!r}"
        text = read(path[1])
        for old, new in _hunks(body):
            assert text.count(old) == 1, f"{path[1]} holds {text.count(old)} copies of the lines {old!r}"
            text = text.replace(old, new)
        return path[1], text
    raise AssertionError(f"a step in a ```{language} block: mark it python, diff or bash")


def _hunks(body: str) -> list[tuple[str, str]]:
    """[(old text, new text)]: each run of '-' lines and the '+' lines after it."""
    hunks: list[tuple[list[str], list[str]]] = []
    for line in body.splitlines():
        sign, rest = line[:1], line[1:]
        assert line and sign in "-+", f"a diff line must start with - or +: {line!r}"
        if sign == "-" and (not hunks or hunks[-1][1]):
            hunks.append(([], []))
        assert hunks, f"a diff must start with a - line: {line!r}"
        hunks[-1][0 if sign == "-" else 1].append(rest)
    return [("\n".join(old) + "\n", "\n".join(new) + "\n") for old, new in hunks]


@pytest.mark.parametrize("section", SECTIONS)
def test_every_step_of_the_page_applies_to_the_repository_as_it_is(section):
    """Fast (no copy): each edit finds its file and lines, and every Python file it gives compiles."""
    steps = _steps(section)
    assert [language for language, _ in steps].count("bash") >= 1, "no step runs the checks"
    edited: dict[str, str] = {}
    for language, code in steps:
        if language != "bash":
            path, text = _edit(language, code, lambda p: edited.get(p) or (REPO / p).read_text())
            edited[path] = text
    assert edited, f"'{section}' edits no file"
    for path, text in edited.items():
        if path.endswith(".py"):
            compile(text, path, "exec")


# Run inside the copy: where the page promises the detector and the family show up.
PROBE = textwrap.dedent("""
    import json
    import numpy as np
    import yaml
    import shiftwatch
    from shiftwatch.core.params import load_params, parse_params
    from shiftwatch.data.corruptions import FAMILIES, check_severity, corrupt
    from shiftwatch.detection.power_design import repetitions_rule, seeded_detector
    from shiftwatch.detection.registry import DETECTORS
    from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS, run_detectors
    from shiftwatch.model.features import Features, image_statistics, pixels_8bit

    rng = np.random.default_rng(0)

    def views(n, concentration):  # low concentration: peaked softmax rows, a confident model
        images = rng.random((n, 28, 28)).astype(np.float32)
        return Features(rng.dirichlet(np.full(10, concentration), n), rng.normal(size=(n, 8)),
                        image_statistics(images), pixels_8bit(images))

    reference, unsure = views(300, 0.2), views(200, 5.0)
    report = run_detectors(reference, unsure, seed=0, alpha=0.05, mmd_permutations=20, mmd_max_per_side=100)
    params = load_params("params.yaml")
    rule = repetitions_rule(params.power)
    sizes = sorted({*params.power.sizes, 100, 500, 2000})
    new = DETECTORS["max_confidence_ks"]
    try:
        check_severity("posterize", 300)
        too_severe = None
    except shiftwatch.ShiftwatchError as err:
        too_severe = str(err)
    square = np.zeros((2, 28, 28), np.float32)
    square[:, 10:18, 10:18] = 0.8
    ramp = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28)
    shifted, stepped = corrupt(square, "posterize", 4, seed=0), corrupt(ramp, "posterize", 4, seed=0)
    raw = yaml.safe_load(open("params.yaml"))
    raw["harm"]["everyday"]["posterize"] = [64]
    print(json.dumps({
        "package": shiftwatch.__file__,
        "detector": {"consumes": new.consumes, "verdict": new.verdict, "cost": new.cost},
        "verdict": FEATURE_DETECTORS, "diagnostics": DIAGNOSTIC_DETECTORS,
        "monitor_tests": sorted(report["tests"]),
        "monitor_diagnostic_pvalue": report["diagnostics"]["max_confidence_ks"]["pvalue"],
        "power_pvalue": seeded_detector("max_confidence_ks", 20)(reference, unsure, seed=1).pvalue,
        "repetitions": {name: [rule(name, n) for n in sizes] for name in ("max_confidence_ks", "pixel_ks")},
        "families": FAMILIES, "too_severe": too_severe,
        "posterize": {"black_stays_black": bool((shifted[square == 0] == 0).all()),
                      "levels": np.unique(stepped).tolist(), "square": np.unique(shifted).tolist(),
                      "dtype": str(shifted.dtype), "same_again": bool((corrupt(square, "posterize", 4, seed=5)
                                                                        == shifted).all())},
        "power_corruptions": params.power.corruptions["posterize"],
        "everyday_accepted": parse_params(raw).harm.everyday["posterize"],
    }))
""")


@pytest.mark.slow  # copies the repository and runs the page's checks (two pytest runs) in it: ~30 s
def test_following_the_page_adds_a_detector_and_a_corruption_family(tmp_path):
    from shiftwatch.detection.verdict import DIAGNOSTIC_DETECTORS, FEATURE_DETECTORS

    # Given a throw-away copy of the repository, where Python imports the copy's package
    copy = tmp_path / "shiftwatch-copy"
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", ".*_cache"))
        else:
            copy.mkdir(exist_ok=True)
            shutil.copy2(source, copy / name)
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    # When every step of the two sections is performed, in order
    edited = set()
    for section in SECTIONS:
        for language, code in _steps(section):
            if language == "bash":
                done = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", code],
                    cwd=copy,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                output = done.stdout[-3000:] + done.stderr[-3000:]
                assert done.returncode == 0, f"'{section}': {code!r} failed:\n{output}"
            else:
                path, text = _edit(language, code, lambda p: (copy / p).read_text())
                (copy / path).write_text(text)
                edited.add(path)

    # Then the copy sees both where the page says
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    facts = json.loads(probe.stdout.splitlines()[-1])
    assert Path(facts["package"]).is_relative_to(copy)

    # the detector: registered as a cheap diagnostic, the verdict untouched
    assert facts["detector"] == {"consumes": "probabilities", "verdict": False, "cost": "cheap"}
    assert tuple(facts["verdict"]) == FEATURE_DETECTORS
    assert tuple(facts["diagnostics"]) == (*DIAGNOSTIC_DETECTORS, "max_confidence_ks")
    # monitor and check (run_detectors): beside the verdict, with its own p-value, which sees
    # a model that became unsure; power: its seeded detector, and a diagnostic's repetitions
    assert facts["monitor_tests"] == sorted(FEATURE_DETECTORS)
    assert facts["monitor_diagnostic_pvalue"] < 1e-6 and facts["power_pvalue"] < 1e-6
    mine, pixel_ks = facts["repetitions"]["max_confidence_ks"], facts["repetitions"]["pixel_ks"]
    assert mine == pixel_ks and mine[-1] < mine[0]  # power.diagnostic_repetitions at large n
    # the power plots and the page's own table
    plots = (copy / "dvc.yaml").read_text()
    assert plots.count("pixel_ks, max_confidence_ks,") == 2
    assert (
        "| `max_confidence_ks` | probabilities | diagnostic | KS on the top softmax probability (the "
        "model's confidence) |"
    ) in (copy / "docs" / "extending.md").read_text()

    # the corruption family: in the table, range-checked, applied as the page says
    assert facts["families"][-1] == "posterize"
    assert "posterize" in facts["too_severe"] and "(1, 256]" in facts["too_severe"]
    posterize = facts["posterize"]
    assert posterize["black_stays_black"] and posterize["same_again"] and posterize["dtype"] == "float32"
    assert posterize["levels"] == pytest.approx([0, 1 / 3, 2 / 3, 1])  # a ramp keeps 4 levels
    assert posterize["square"] == pytest.approx([0, 2 / 3])  # 0.8 rounds to the nearest
    # params.yaml: measured by power, and accepted by the schema in a harm group
    assert facts["power_corruptions"] == [16, 8, 4]
    assert facts["everyday_accepted"] == [64]

    # and the page's code passes the project's lint
    ruff = shutil.which("ruff", path=env["PATH"])
    if ruff:
        python_files = sorted(path for path in edited if path.endswith(".py"))
        lint = subprocess.run([ruff, "check", *python_files], cwd=copy, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout
