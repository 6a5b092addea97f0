"""The nominal peak that the progress bar and log.jsonl divide by: FLOPs per cycle by CPU."""

import pytest

from edgessl.train import hardware


@pytest.mark.parametrize("vendor, family, flags, fp32, bf16", [
    ("GenuineIntel", "6", {"avx2", "fma", "avx512f", "avx512_bf16"}, 64, 128),  # Sapphire Rapids without AMX
    ("AuthenticAMD", "25", {"avx2", "fma", "avx512f", "avx512_bf16"}, 32, 64),  # Zen 4: double-pumped 256 bit
    ("AuthenticAMD", "26", {"avx2", "fma", "avx512f", "avx512_bf16"}, 64, 128),  # Zen 5: full 512-bit pipes
    ("AuthenticAMD", "23", {"avx2", "fma"}, 32, 32),  # Zen 2: AVX2 only, no native bf16
])
def test_flops_per_cycle_by_cpu(monkeypatch, vendor, family, flags, fp32, bf16):
    fields = {"vendor_id": vendor, "cpu family": family}
    monkeypatch.setattr(hardware, "_cpuinfo_field", fields.__getitem__)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert hardware.flops_per_cycle() == fp32
    assert hardware.flops_per_cycle(bf16=True) == bf16
    # oneDNN held to AVX2: 256-bit FMA pipes, no bf16 arithmetic, whatever the CPU.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.flops_per_cycle() == hardware.flops_per_cycle(bf16=True) == 32
