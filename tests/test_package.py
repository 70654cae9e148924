"""The package imports without the extension or Triton, reports what it has, and dispatches clearly."""
import json
import os
import subprocess
import sys

import pytest
import torch

import spatialseg_fast
from spatialseg_fast import BackendUnavailableError, _backend
from spatialseg_fast.cli import main as cli_main


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SPATIALSEG_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_build_info_reports_the_pieces():
    info = spatialseg_fast.build_info()
    for key in ("version", "extension", "openmp", "max_threads", "triton", "cuda", "torch"):
        assert key in info
    assert info["version"] == spatialseg_fast.__version__
    if os.environ.get("SPATIALSEG_REQUIRE_EXT") == "1":
        assert info["extension"] and info["openmp"], info


def test_import_does_not_load_triton_or_kernels():
    result = run_python(
        "import sys, spatialseg_fast; "
        "print('triton' in sys.modules, 'spatialseg_fast.kernels' in sys.modules)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_torch_backend_works_with_the_extension_disabled():
    code = (
        "import json, torch, spatialseg_fast as s\n"
        "from spatialseg_fast.ops import extract_patches\n"
        "from spatialseg_fast._backend import resolve_backend\n"
        "p = extract_patches(torch.randn(9, 9, 9), [[4, 4, 4]], config=s.PatchConfig(patch2d=5, patch3d=3, grid=2))\n"
        "err = ''\n"
        "try:\n"
        "    extract_patches(torch.randn(9, 9, 9), [[4, 4, 4]], backend='cpp')\n"
        "except s.BackendUnavailableError as e:\n"
        "    err = str(e)\n"
        "print(json.dumps([s.build_info()['extension'], resolve_backend('auto', torch.device('cpu')), list(p.planes.shape), err]))\n"
    )
    result = run_python(code, SPATIALSEG_DISABLE_EXT="1")
    assert result.returncode == 0, result.stderr
    ext, auto, shape, err = json.loads(result.stdout)
    assert ext is False and auto == "torch" and shape == [1, 3, 5, 5]
    assert "SPATIALSEG_DISABLE_EXT" in err


def test_require_ext_turns_a_missing_extension_into_an_error(monkeypatch):
    monkeypatch.setenv("SPATIALSEG_REQUIRE_EXT", "1")
    monkeypatch.setattr(_backend, "_load_extension", lambda: (None, "spatialseg_fast._C could not be imported (test)"))
    with pytest.raises(ImportError, match="SPATIALSEG_REQUIRE_EXT=1"):
        _backend.extension()
    info = spatialseg_fast.build_info()
    assert info["extension"] is False and "SPATIALSEG_REQUIRE_EXT" in info["extension_error"]


def test_explicit_backend_errors_name_the_missing_piece(monkeypatch):
    monkeypatch.setattr(_backend, "_load_extension", lambda: (None, "spatialseg_fast._C could not be imported (test)"))
    monkeypatch.delenv("SPATIALSEG_REQUIRE_EXT", raising=False)
    with pytest.raises(BackendUnavailableError, match="compiled extension"):
        _backend.resolve_backend("cpp", torch.device("cpu"))
    assert _backend.resolve_backend("auto", torch.device("cpu")) == "torch"
    monkeypatch.setattr(_backend, "_triton_status", lambda: (None, "triton is not installed (pip install 'spatialseg_fast[gpu]')"))
    with pytest.raises(BackendUnavailableError, match="triton is not installed"):
        _backend.resolve_backend("triton", torch.device("cpu"))
    with pytest.raises(BackendUnavailableError, match="CPU tensors"):
        _backend.resolve_backend("cpp", torch.device("meta"))
    with pytest.raises(ValueError, match="num_threads"):
        _backend.resolve_threads(0)


def test_cli_info_and_demo(capsys):
    assert cli_main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == spatialseg_fast.__version__
    from spatialseg_fast.model import default_model_path

    if default_model_path() is not None:  # the shipped model's card
        card = info["default_model"]
        assert card["network"] == "basenet+dist+prob+3d, 135 classes" and "CC BY-NC" in card["license"]
        assert "steps" in card["training"] and "voxel samples" in card["training"]
        assert cli_main(["info"]) == 0  # the readable form: the card as lines of text, not a dict
        text = capsys.readouterr().out
        assert "default model" in text and "  network  " in text.replace("   ", "  ") and "{" not in text
    assert cli_main(["demo", "--kernels", "--n", "64", "--shape", "40", "44", "36"]) == 0
    out = capsys.readouterr().out
    assert "extract_patches [torch]" in out and "landmark_distances" in out
    assert cli_main(["demo", "--kernels", "--n", "0"]) == 2
