"""Imported at start-up by every Python with tests/hooks on PYTHONPATH: the chaos tests' jobs (helpers.slow_save).

With MEDMINDS_TEST_SLOW_SAVE=STEP:SECONDS, the first checkpoint of a step >= STEP in each process waits SECONDS
after its files are written and before they are renamed into place, so a fault can be aimed at a save in progress.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

_wanted = re.fullmatch(r"(\d+):(\d+(?:\.\d+)?)", os.environ.get("MEDMINDS_TEST_SLOW_SAVE", ""))
if _wanted:
    from medminds_hpc import fileio

    _swap_in = fileio.swap_in
    _slowed: list[int] = []

    def _slow_swap_in(src, final, *args, **kwargs):  # type: ignore[no-untyped-def]
        step = re.fullmatch(r"step-(\d{8})", Path(final).name)
        if step and int(step.group(1)) >= int(_wanted.group(1)) and not _slowed:
            _slowed.append(int(step.group(1)))
            time.sleep(float(_wanted.group(2)))
        return _swap_in(src, final, *args, **kwargs)

    fileio.swap_in = _slow_swap_in
