"""What the CPU can do: SIMD flags, native bf16, a nominal peak in GFLOP/s, and the allocator.

The peak is a nominal figure (cores x clock x FLOPs per cycle of the widest FMA path), good
enough to tell users how far a step is from the machine's arithmetic limit, not a
measurement. FLOPs per cycle per core: 32 fp32 for two 256-bit FMA pipes (AVX2 + FMA; also
AMD Zen 4, whose AVX-512 is double-pumped 256-bit), 64 for cores with two 512-bit FMA pipes
(Intel server cores with AVX-512, AMD Zen 5: CPU family 26), 16 for AVX without FMA. Native
bf16 (AVX512_BF16 dot products, AMX) doubles the fp32 figure for bf16 arithmetic; AMX's tile
units are counted at 16x the AVX-512 fp32 rate.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

# ONEDNN_MAX_CPU_ISA values that allow bf16 arithmetic (oneDNN's names, lower ones do not).
_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
              "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"}
_NO_AVX512_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        m = re.search(r"^flags\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return frozenset()
    return frozenset(m.group(1).split()) if m else frozenset()


@functools.cache
def _cpuinfo_field(name: str) -> str:
    try:
        m = re.search(rf"^{name}\s*:\s*(\S+)", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return ""
    return m.group(1) if m else ""


def cpu_vendor() -> str:
    return _cpuinfo_field("vendor_id")


def full_width_avx512() -> bool:
    """Two 512-bit FMA pipes: Intel's AVX-512 server cores and AMD from Zen 5 (family 26) on;
    Zen 4 (family 25) splits each 512-bit operation into two 256-bit halves."""
    vendor = cpu_vendor()
    family = _cpuinfo_field("cpu family")
    return vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and family.isdigit() and int(family) >= 26)


def max_isa() -> str | None:
    """The ISA cap set with ONEDNN_MAX_CPU_ISA (e.g. AVX2 to emulate an AVX2-only machine)."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.upper() if value else None


def native_bf16() -> bool:
    """True when bf16 arithmetic runs in hardware here (and oneDNN is allowed to use it): then
    bf16 autocast is faster; elsewhere it is emulated and slower than fp32."""
    flags = cpu_flags()
    if not ({"avx512_bf16", "amx_bf16"} & flags):
        return False
    isa = max_isa()
    return isa is None or isa in _BF16_ISAS


def clock_ghz() -> float:
    """The highest clock the kernel reports (cpufreq max, else /proc/cpuinfo's current MHz)."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = [float(x) for x in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text(), re.M)]
    except OSError:
        mhz = []
    return max(mhz) / 1000 if mhz else 2.5


def flops_per_cycle(bf16: bool = False) -> int:
    flags = cpu_flags()
    isa = max_isa()
    avx512 = "avx512f" in flags and isa not in _NO_AVX512_ISAS
    if avx512 and full_width_avx512():
        fp32 = 64
    elif "fma" in flags and "avx2" in flags:
        fp32 = 32
    elif "avx" in flags:
        fp32 = 16
    else:
        fp32 = 8
    if bf16 and native_bf16():
        return fp32 * 16 if "amx_bf16" in flags and (isa is None or "AMX" in isa or isa == "ALL") else fp32 * 2
    return fp32


def peak_gflops(cores: int, bf16: bool = False) -> float:
    """Nominal peak of `cores` cores for fp32 (or native bf16) arithmetic."""
    return cores * clock_ghz() * flops_per_cycle(bf16)


def describe() -> str:
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
            if f in cpu_flags()]
    cap = f", oneDNN capped at {max_isa()}" if max_isa() else ""
    return f"{os.cpu_count()} cores, {clock_ghz():.2f} GHz, {' '.join(simd) or 'no AVX2'}{cap}"


# ---------------------------------------------------------------- the allocator

# Tried in this order by the `edgessl pretrain` launcher (train/cli.py). glibc malloc returns
# every large tensor (> 32 MB is always mmap'ed) to the kernel when it is freed, so each step
# page-faults hundreds of thousands of pages back in: ~20% of CPU time in the kernel measured
# on a 2-core machine. tcmalloc keeps freed memory for reuse (0.2% kernel time, same speed or
# better); jemalloc's default decay returned memory as eagerly and was slower there.
ALLOCATORS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_allocator(name: str) -> str | None:
    for lib in ALLOCATORS[name]:
        for d in LIB_DIRS:
            path = Path(d) / lib
            if path.is_file():
                return str(path)
    return None


# glibc tunables for when no caching allocator is installed: never mmap (large blocks come from
# the heap and are reused), and never trim the heap back to the kernel.
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=18446744073709551615"


def loaded_allocator() -> str:
    """Which allocator this process runs with: tcmalloc, jemalloc, glibc-tuned or glibc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        maps = ""
    for name, libs in ALLOCATORS.items():
        if any(lib.split(".so")[0] in maps for lib in libs):
            return name
    if "mmap_max=0" in os.environ.get("GLIBC_TUNABLES", ""):
        return "glibc-tuned"
    return "glibc"
