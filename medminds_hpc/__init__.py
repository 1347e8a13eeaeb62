"""medminds: reproduce and beat "Medical Minds Unite" on a Slurm cluster.

Importing this package must stay cheap: the CLI's `--help`, `status` and `report` never load torch.
"""

import logging as _logging

__version__ = "0.1.0"


class _NoOptionalCpuKernelNotice(_logging.Filter):
    """bitsandbytes logs, when imported (peft and trl import it) on a CPU with AVX512-BF16, that an optional
    fused 4-bit kernel package (`kernels`) is missing. Its own CPU path works without it, so on every CPU run and
    job log that warning was only noise ahead of the real output. This drops that one message, nothing else."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


# installed here, before anything can import bitsandbytes: the message is logged at its import
_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoOptionalCpuKernelNotice())
