"""precision="auto": bf16 only where the hardware computes it natively."""
import torch

import spatialseg_fast
from spatialseg_fast import precision


def test_auto_follows_the_cpu_unit(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: None)
    assert precision.auto_precision(torch.device("cpu")) == "fp32"
    assert precision.auto_precision(torch.device("cuda")) == "bf16"
    monkeypatch.setattr(precision, "cpu_bf16_unit", lambda: "AMX-BF16")
    assert precision.auto_precision(torch.device("cpu")) == "bf16"


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
    assert info["auto_precision"] in ("fp32", "bf16") and "cpu_bf16_unit" in info
