"""tmspr_jax.hostmem: with the setting, a freed block of host memory is reused without faulting its pages in again;
the switch leaves glibc's defaults. Run in fresh processes (the setting is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import ctypes, ctypes.util, resource
from tmspr_jax.hostmem import retain_freed_memory
applied = retain_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def faults_of_a_fresh_256_mib_block():
    # malloc as XLA's buffers get it (numpy's own large arrays ask for huge pages and would fault far less)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(2**28)
    ctypes.memset(p, 1, 2**28)  # touch every page
    libc.free(p)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
import threading
faults = []
def in_a_thread():  # XLA allocates from its worker threads, whose own glibc arenas would mmap large blocks
    faults_of_a_fresh_256_mib_block()
    faults.append(faults_of_a_fresh_256_mib_block())
t = threading.Thread(target=in_a_thread)
t.start()
t.join()
print(applied, faults[0])
"""


def _probe(env_switch: str | None) -> tuple[bool, int]:
    import os

    env = dict(os.environ)
    env.pop("TMSPR_RETAIN_FREED_MEMORY", None)
    if env_switch is not None:
        env["TMSPR_RETAIN_FREED_MEMORY"] = env_switch
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is glibc's (Linux)")
def test_a_freed_block_is_reused_without_page_faults():
    applied, faults = _probe(None)
    assert applied and faults < 1000  # the second 256 MiB block lands on the first one's pages
    applied, faults = _probe("0")
    assert not applied and faults > 60_000  # glibc's default: mmap and munmap, 65,536 pages faulted in again
