"""The package runs on Python 3.10 (pyproject's requires-python): vermin reads every module for newer features.

No 3.10 interpreter is needed: vermin knows, per module, function and syntax, the first Python that has it.
`--eval-annotations` because config.py evaluates annotations (typing.get_type_hints) at run time.
"""

import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

VERMIN = ["-c", "import sys; from vermin import main; sys.exit(main())", "--target=3.10-", "--violations", "--eval-annotations",
          "--no-tips", "--quiet", "--processes=1"]


def vermin(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *VERMIN, *map(str, paths)], capture_output=True, text=True, timeout=120)


def test_package_needs_nothing_newer_than_python_3_10():
    proc = vermin(ROOT / "medminds_hpc")
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_the_check_catches_a_3_11_module(tmp_path):
    module = tmp_path / "uses_tomllib.py"
    module.write_text("import tomllib\n")
    proc = vermin(module)
    assert proc.returncode != 0 and "tomllib" in proc.stdout, proc.stdout + proc.stderr


FAKE_310 = """
import sys, tomllib, types
sys.version_info = (3, 10, 12, "final", 0)
tomli = types.ModuleType("tomli")  # tomllib is tomli, vendored: the same API
tomli.load, tomli.loads, tomli.TOMLDecodeError = tomllib.load, tomllib.loads, tomllib.TOMLDecodeError
sys.modules["tomli"] = tomli
from medminds_hpc import paths, errors
assert paths.tomllib is tomli, paths.tomllib
good, bad = sys.argv[1:3]
print(paths.read_toml(good))
try:
    paths.read_toml(bad)
except errors.UserError as e:
    print("ERROR", e)
"""


def test_toml_files_are_read_with_tomli_before_3_11(tmp_path):
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text('stage = "doctor"\n')
    bad.write_text('stage = "doctor"\n[params\n')
    proc = subprocess.run([sys.executable, "-c", FAKE_310, str(good), str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "{'stage': 'doctor'}" in proc.stdout and f"ERROR {bad}: malformed TOML" in proc.stdout and "line 2" in proc.stdout
    assert "tomli>=1.1; python_version < '3.11'" in (ROOT / "pyproject.toml").read_text()
