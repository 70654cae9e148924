"""``precision="auto"``: bf16 where the hardware computes it natively, fp32 elsewhere.

bf16 halves the dense engine's time on CPUs with bf16 matrix units (AMX-BF16 on Sapphire Rapids
and later, AVX512-BF16 on Cooper Lake / Zen 4 and later) and on CUDA GPUs, with >= 99.9% of brain
voxels labelled as in fp32 (bench/RESULTS.md). Without such units torch emulates bf16 through
fp32 conversions and it is *slower* than fp32 (on an AVX2-only EPYC a bf16 training step took
minutes instead of seconds), so "auto" keeps fp32 there. "fp32" stays the exact mode.
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_bf16_unit() -> str | None:
    """"AMX-BF16", "AVX512-BF16" or None: the CPU's native bf16 matrix unit, detected at run time."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cpu = getattr(torch, "cpu", None)

    def probe(name: str) -> bool:
        fn = getattr(cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except Exception:  # noqa: BLE001 - private probes differ between torch versions
            return False

    if "amx_bf16" in flags or (not flags and probe("_is_amx_tile_supported")):
        return "AMX-BF16"
    if "avx512_bf16" in flags or (not flags and probe("_is_avx512_bf16_supported")):
        return "AVX512-BF16"
    return None


def auto_precision(device: torch.device) -> str:
    """The precision "auto" picks on `device`: bf16 on CUDA or a CPU with a bf16 unit, else fp32."""
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_bf16_unit() else "fp32"
