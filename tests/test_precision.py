"""precision="auto": fp32 on every device; bf16 is an opt-in (bench/RESULTS.md), named where it is fast."""
import torch

import spatialseg_fast
from spatialseg_fast import precision


def test_auto_is_fp32_everywhere(monkeypatch):
    for unit in (None, "AVX512-BF16", "AMX-BF16"):
        monkeypatch.setattr(precision, "cpu_bf16_unit", lambda unit=unit: unit)
        assert precision.auto_precision(torch.device("cpu")) == "fp32"
        assert precision.auto_precision(torch.device("cuda")) == "fp32"
    assert "AMX-BF16" in precision.bf16_hint(torch.device("cpu"))
    assert precision.bf16_hint(torch.device("cuda")) is not None
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: None)
    assert precision.bf16_hint(torch.device("cpu")) is None  # no unit: bf16 would be emulated


def test_cli_names_the_faster_opt_in_on_a_bf16_cpu(monkeypatch):
    from types import SimpleNamespace

    from spatialseg_fast.cli import _precision_name

    args = SimpleNamespace(precision="auto", device="cpu")
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: "AVX512-BF16")
    assert _precision_name(args) == "auto = fp32 (this CPU has AVX512-BF16: --precision bf16 is ~2x faster)"
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: None)
    assert _precision_name(args) == "auto = fp32"
    assert _precision_name(SimpleNamespace(precision="bf16", device="cpu")) == "bf16"


def test_cpuinfo_flags_are_read(monkeypatch, tmp_path):
    import builtins

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(fake if p == "/proc/cpuinfo" else p, *a, **k))
    precision.cpu_bf16_unit.cache_clear()
    try:
        assert precision.cpu_bf16_unit() == "AVX512-BF16"
        fake.write_text("flags : fpu avx2 amx_tile amx_bf16 avx512_bf16\n")
        precision.cpu_bf16_unit.cache_clear()
        assert precision.cpu_bf16_unit() == "AMX-BF16"
        fake.write_text("flags : fpu avx2 fma\n")
        precision.cpu_bf16_unit.cache_clear()
        assert precision.cpu_bf16_unit() is None
    finally:
        precision.cpu_bf16_unit.cache_clear()


def test_segment_defaults_to_auto_and_info_says_which(monkeypatch):
    import inspect

    from spatialseg_fast.inference import DenseEngine
    from spatialseg_fast.pipeline import segment_volume
    from test_training import toy_model

    for fn in (spatialseg_fast.segment, segment_volume):
        assert inspect.signature(fn).parameters["precision"].default == "auto"
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: "AMX-BF16")  # even with a unit: fp32
    assert DenseEngine(toy_model(), device="cpu", precision="auto").precision == "fp32"
    info = spatialseg_fast.build_info()
    assert info["auto_precision"] == "fp32" and "cpu_bf16_unit" in info
