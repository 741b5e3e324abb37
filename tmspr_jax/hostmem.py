"""Host memory: keep freed memory in the process instead of handing it back to the operating system.

XLA on the CPU allocates each program's temporaries afresh at every call (one block of 6 GB for a ViT-B training
step at batch 4), from its worker threads; glibc serves such blocks with ``mmap`` and returns them with ``munmap``
when freed. Every step then faults in, and the kernel zeroes, every page again: 1.5 million page faults and 3.5 s of
kernel time per step on the 2-core CPU of docs/memory.md, and a 45 MB elementwise output costs 22 ms instead of 2 ms.
:func:`retain_freed_memory` makes glibc serve every block from its one heap and keep what is freed, so the next step
reuses the last one's pages (no fault at all). The process's resident memory then stays at its peak, which a
training or feature-extraction process reaches at every step anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ENV_SWITCH = "TMSPR_RETAIN_FREED_MEMORY"  # "0": leave glibc's defaults
_state = {"retained": False}


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc only; elsewhere nothing changes).

    Returns whether the setting was applied. Set ``TMSPR_RETAIN_FREED_MEMORY=0`` to keep glibc's defaults (to
    measure them, or where resident memory must shrink between steps).
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # One arena: a thread's own arena serves blocks above its 64 MiB heap size with mmap whatever M_MMAP_MAX says.
    # No mmap; and a trim threshold of -1, which glibc reads as the largest size_t: never trim.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    _state["retained"] = all(mallopt(param, value) for param, value in settings)
    return _state["retained"]


def retained() -> bool:
    """Whether :func:`retain_freed_memory` has been applied in this process (the benchmarks report it)."""
    return _state["retained"]
