"""What importing the package does besides being cheap: it keeps a known, harmless notice out of every CPU log."""

import subprocess
import sys

import pytest

from tests.helpers import ROOT

NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


@pytest.mark.slow
def test_the_optional_cpu_kernel_notice_of_bitsandbytes_is_dropped_and_nothing_else():
    code = ("import medminds_hpc, peft, logging\n"
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another bitsandbytes warning')\n")
    # both interpreters at once: each spends its seconds importing peft
    started = [subprocess.Popen([sys.executable, "-c", c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for c in ("import peft", code)]
    outputs = [p.communicate(timeout=300) for p in started]
    bare, ours = (subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(started, outputs))
    if NOTICE not in bare.stderr:
        pytest.skip("bitsandbytes prints no such notice here (a CPU without AVX512-BF16, or the kernels package installed)")
    assert ours.returncode == 0, ours.stderr
    assert NOTICE not in ours.stderr and "another bitsandbytes warning" in ours.stderr
