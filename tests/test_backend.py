"""backend.reuse_freed_memory: large arrays take freed memory back instead of fresh pages."""
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from minimaskrcnn.backend import reuse_freed_memory

    if sys.argv[1] == "on":
        assert reuse_freed_memory() is True
    n = 16 * 2**20  # 64 MB of float32: above glibc's 32 MiB mmap ceiling
    a = np.ones(n, dtype=np.float32)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(n, dtype=np.float32)  # writes every page
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_a_freed_large_array_is_reused_without_page_faults():
    """Without the setting, a new 64 MB array is a fresh mapping, faulted in page by page (16k faults
    of 4 KiB pages, or ~32 of 2 MiB transparent huge pages and some small ones); with it, the freed
    block is taken back and written without faults. In a subprocess: the setting is process-wide."""
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        faults[mode] = int(out.stdout.strip())
    assert faults["off"] >= 32, faults
    assert faults["on"] * 4 < faults["off"], faults
