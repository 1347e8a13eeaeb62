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


# commands that only read runs (status, report): a home not made yet is no error, a file is ---------------------------
def test_a_home_to_read_is_checked_without_writing(tmp_path, monkeypatch):
    from tests.helpers import tree_snapshot

    taken = tmp_path / "home-file"
    taken.write_text("not a folder")
    before = tree_snapshot(tmp_path)
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path / "not-yet" / "home"))
    assert paths.existing_home() is None
    monkeypatch.setenv("MEDMINDS_HOME", str(tmp_path))
    assert paths.existing_home() == tmp_path
    monkeypatch.setenv("MEDMINDS_HOME", str(taken))
    with pytest.raises(UserError, match=f"MEDMINDS_HOME={taken} is a file, not a directory; set MEDMINDS_HOME to the folder that holds your runs/"):
        paths.existing_home()
    monkeypatch.setenv("MEDMINDS_HOME", str(taken / "below"))
    with pytest.raises(UserError, match=f"below cannot exist: {taken} is a file, not a directory"):
        paths.existing_home()
    assert tree_snapshot(tmp_path) == before


def test_a_home_that_cannot_be_read_is_one_line(tmp_path):
    home = tmp_path / "locked"
    (home / "runs").mkdir(parents=True)
    home.chmod(0o000)
    try:
        as_user = {"preexec_fn": without_root_override} if os.geteuid() == 0 else {}
        proc = run_cli("status", env={"MEDMINDS_HOME": str(home)}, **as_user)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
        assert f"MEDMINDS_HOME={home} cannot be read (permission denied); ask its owner" in " ".join(proc.stderr.split())
        proc = run_cli("report", env={"MEDMINDS_HOME": str(home / "runs")}, **as_user)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"cannot be read: {home} is not readable (permission denied)" in " ".join(proc.stderr.split())
    finally:
        home.chmod(0o755)
