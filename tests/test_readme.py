"""Every shell and Python example in the README runs, so that a pasted example cannot fail.

The examples run in a scratch folder holding the files they name, with a tiny model standing in
for the shipped one (the shipped model on a whole 1 mm brain takes minutes on a CPU). `spatialseg`
lines run through the real command line in-process; `train` and `demo` lines (hours / minutes of
compute) and the set-up lines (CI runs those) are parsed by the real parser instead, which checks
their options. Python blocks run in one namespace with `volume`, `pred` and `ref` defined.
"""
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from spatialseg_fast.cli import build_parser, main
from spatialseg_fast.volume import Volume

from test_pipeline import SHAPE, grid_affine, phantom, save_toy_model, write

# a tiny model with real Neuromorphometrics codes, so examples that name them run unchanged
CODES = (0, 47, 48, 59)
NAMES = ("background", "Right Hippocampus", "Left Hippocampus", "Right Thalamus Proper")


@pytest.fixture(scope="module")
def readme_model_path(tmp_path_factory):
    _, labels = phantom()
    coded = np.select([labels == 2, labels == 5, labels == 7], [47, 48, 59], 0).astype(np.uint8)
    return save_toy_model(tmp_path_factory.mktemp("readme_model") / "tiny.safetensors", coded, CODES, NAMES)

README = Path(__file__).resolve().parent.parent / "README.md"
PARSE_ONLY = ("train", "demo")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def shell_lines() -> list[str]:
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


@pytest.fixture()
def scratch(tmp_path, monkeypatch, readme_model_path):
    monkeypatch.setenv("SPATIALSEG_MODEL", str(readme_model_path))  # seen by Dask worker processes too
    monkeypatch.chdir(tmp_path)
    image, labels = phantom()
    for name in ("t1.nii.gz", "head.nii.gz", "sub-01_T1w_brain.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz",
                 "sub-02/anat/sub-02_T1w.nii.gz", "scans/a.nii.gz", "scans/b.nii.gz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / name, image, grid_affine())
    write(tmp_path / "pred.nii.gz", labels, grid_affine())
    write(tmp_path / "ref.nii.gz", np.roll(labels, 1, axis=0), grid_affine())
    return tmp_path


def test_the_readme_has_examples():
    assert len(shell_lines()) >= 5 and len(blocks("python")) >= 2


@pytest.mark.parametrize("line", shell_lines())
def test_shell_example(line, scratch):
    if line.startswith(("bash ", "nohup bash ")):  # a long script: it must at least exist
        script = shlex.split(line)[line.startswith("nohup") + 1]
        assert (README.parent / script).is_file(), f"README names a missing script: {line}"
        return
    if "pip install" in line or line.startswith(("python3 -m venv", "pytest", "python bench/")):
        pytest.skip("set-up, test and benchmark commands: run by CI and by hand, see README")
    words = shlex.split(line)
    assert words[0] == "spatialseg", f"unexpected README shell line: {line}"
    if words[1] in PARSE_ONLY:
        build_parser().parse_args(words[1:])
        return
    assert main(words[1:]) == 0, line


def test_python_examples(scratch):
    _, labels = phantom()
    image, _ = phantom()
    namespace = {"volume": Volume(image, grid_affine()), "pred": labels, "ref": np.roll(labels, 1, axis=0)}
    for block in blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
