"""precision="auto": bf16 on CUDA, fp32 on every CPU (bf16 there is an opt-in, bench/RESULTS.md)."""
import torch

import spatialseg_fast
from spatialseg_fast import precision


def test_auto_is_fp32_on_every_cpu_and_bf16_on_cuda(monkeypatch):
    for unit in (None, "AVX512-BF16", "AMX-BF16"):
        monkeypatch.setattr(precision, "cpu_bf16_unit", lambda unit=unit: unit)
        assert precision.auto_precision(torch.device("cpu")) == "fp32"
        assert precision.auto_precision(torch.device("cuda")) == "bf16"


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


def test_segment_defaults_to_auto_and_info_says_which():
    from spatialseg_fast.inference import DenseEngine
    from test_training import toy_model

    engine = DenseEngine(toy_model(), device="cpu")
    assert engine.precision == precision.auto_precision(torch.device("cpu"))
    info = spatialseg_fast.build_info()
    assert info["auto_precision"] == ("bf16" if torch.cuda.is_available() else "fp32") and "cpu_bf16_unit" in info
