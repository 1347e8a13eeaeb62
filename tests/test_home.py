"""An unusable $MEDMINDS_HOME stops `submit` with one line naming it and what to do (exit 2), before anything is written."""

import os

import pytest

from medminds_hpc import paths
from medminds_hpc.errors import UserError
from tests.helpers import run_cli, without_root_override

SUBMIT = ("submit", "doctor", "-d", "micro", "--cluster", "dev", "--executor", "local")


def assert_one_line(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())
    assert proc.stderr.lstrip().startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in text, (n, text)
    assert "set MEDMINDS_HOME to a directory you can write" in text


def test_home_that_is_a_file(tmp_path, monkeypatch):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    assert_one_line(run_cli(*SUBMIT, env={"MEDMINDS_HOME": str(home)}), f"MEDMINDS_HOME={home} is not a directory")
    assert home.read_text() == "not a folder"
    monkeypatch.setenv("MEDMINDS_HOME", str(home / "below"))
    with pytest.raises(UserError, match="cannot be created: .*home-file is not a directory"):
        paths.check_home()


def test_home_that_is_not_writable(tmp_path):
    home = tmp_path / "read-only"
    home.mkdir()
    home.chmod(0o555)
    try:
        as_user = {"preexec_fn": without_root_override} if os.geteuid() == 0 else {}
        assert_one_line(run_cli(*SUBMIT, env={"MEDMINDS_HOME": str(home)}, **as_user), f"MEDMINDS_HOME={home} is not writable")
        assert list(home.iterdir()) == []
    finally:
        home.chmod(0o755)


def test_home_under_proc():
    assert_one_line(run_cli(*SUBMIT, env={"MEDMINDS_HOME": "/proc/medminds"}), "MEDMINDS_HOME=/proc/medminds is under /proc")


def test_usable_homes_pass_and_are_not_touched(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path / "new" / "home"))
    assert paths.check_home() == tmp_path / "new" / "home"
    assert not (tmp_path / "new").exists()  # made when the first run is, not by the check
    before = sorted(tmp_path.iterdir())
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path))
    paths.check_home()
    assert sorted(tmp_path.iterdir()) == before
