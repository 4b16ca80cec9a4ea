"""mimbench keeps the memory freed tensors leave in the process (glibc), and
MIMBENCH_KEEP_FREED_MEMORY=0 leaves glibc's defaults."""

import os
import subprocess
import sys

import pytest

PROBE = """
import os, torch
from mimbench.allocator import keep_freed_memory
kept = keep_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = resident()
x = torch.ones(64, 1024, 1024)  # 256 MiB, every page touched
del x
print(kept, (resident() - before) / 2**20)
"""


def probe(keep: str):
    env = {**os.environ, "MIMBENCH_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; glibc's mallopt")
def test_freed_tensors_stay_in_the_process_unless_turned_off():
    kept, growth = probe("1")
    if not kept:
        pytest.skip("this C library is not glibc")
    assert growth > 200  # the 256 MiB freed are still resident, ready for the next step
    kept, growth = probe("0")
    assert not kept and growth < 50  # glibc's default hands them back at once
