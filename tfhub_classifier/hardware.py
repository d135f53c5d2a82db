"""What this machine's CPU can do, read without importing TensorFlow (so flag checks stay instant)."""
import os


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_supports_bfloat16():
    """True on CPUs with AMX or AVX512-BF16, where oneDNN runs bfloat16 matmuls natively."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cores():
    """The CPU cores this process may run on (its affinity, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
