"""What importing the package does besides being cheap: it keeps a known, harmless notice out of every CPU log."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT

NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


@pytest.mark.slow
def test_the_optional_cpu_kernel_notice_of_bitsandbytes_is_dropped_and_nothing_else():
    bare = subprocess.run([sys.executable, "-c", "import peft"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if NOTICE not in bare.stderr:
        pytest.skip("bitsandbytes prints no such notice here (a CPU without AVX512-BF16, or the kernels package installed)")
    code = ("import medminds_hpc, peft, logging\n"
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another bitsandbytes warning')\n")
    ours = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ours.returncode == 0, ours.stderr
    assert NOTICE not in ours.stderr and "another bitsandbytes warning" in ours.stderr
