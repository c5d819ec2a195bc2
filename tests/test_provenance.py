"""Provenance: what every metrics.json and benchmark report records about the code and machine behind its figures."""
from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision

import fcnseg
from fcnseg import provenance as prov
from fcnseg.runtime import cpu_model

KEYS = {"fcnseg_version", "git_commit", "git_dirty", "torch_version", "torchvision_version", "python_version", "device",
        "cpu_model", "gpu_name", "command", "date"}


def _head() -> str | None:
    """The checkout's commit as git itself reports it, or None outside a checkout or without git."""
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(prov.PACKAGE_DIR.parent), "rev-parse", "HEAD"], capture_output=True,
                         text=True)
    inside = (prov.PACKAGE_DIR.parent / ".git").exists()
    return out.stdout.strip() if out.returncode == 0 and inside else None


def test_the_record_names_versions_machine_command_and_date():
    record = prov.provenance("cpu", command=["fcnseg", "evaluate", "runs/a b/best.pt"])
    assert set(record) == KEYS
    assert record["fcnseg_version"] == fcnseg.__version__
    assert record["torch_version"] == torch.__version__ and record["torchvision_version"] == torchvision.__version__
    assert record["device"] == "cpu" and record["gpu_name"] is None and record["cpu_model"] == cpu_model()
    assert record["command"] == "fcnseg evaluate 'runs/a b/best.pt'"
    assert record["git_commit"] == _head()
    date = datetime.datetime.fromisoformat(record["date"].replace("Z", "+00:00"))
    assert date.tzinfo is not None and date.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - date).total_seconds()) < 60
    json.dumps(record)  # it goes into JSON files as it is


def test_without_git_the_commit_is_null_and_nothing_fails(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(prov.subprocess, "run", no_git)
    record = prov.provenance()
    assert record["git_commit"] is None and record["git_dirty"] is None and record["fcnseg_version"]


def test_a_copy_outside_any_checkout_has_no_commit(monkeypatch, tmp_path):
    monkeypatch.setattr(prov, "PACKAGE_DIR", tmp_path / "site-packages" / "fcnseg")
    (tmp_path / "site-packages" / "fcnseg").mkdir(parents=True)
    assert prov.git_commit() == (None, None)


def test_a_copy_inside_another_repository_has_no_commit(monkeypatch, tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "venv" / "fcnseg").mkdir(parents=True)
    monkeypatch.setattr(prov, "PACKAGE_DIR", tmp_path / "venv" / "fcnseg")
    assert prov.git_commit() == (None, None)  # that repository's commit says nothing about fcnseg's code


def test_the_command_line_names_the_program_as_typed(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/lib/python3/site-packages/fcnseg/__main__.py", "evaluate", "x.pt"])
    assert prov.command_line() == "python -m fcnseg evaluate x.pt"
    monkeypatch.setattr(sys, "argv", ["benchmarks/run.py", "--quick"])
    assert prov.command_line() == "python benchmarks/run.py --quick"
    monkeypatch.setattr(sys, "argv", ["/home/u/.venv/bin/fcnseg", "benchmark", "--size", "64"])
    assert prov.command_line() == "fcnseg benchmark --size 64"


def test_the_summary_line_says_which_code_ran():
    record = dict(prov.provenance("cpu"), git_commit="0123456789abcdef0123", git_dirty=True, cpu_model="Some CPU")
    line = prov.summary(record)
    assert "0123456789ab with uncommitted changes" in line and "cpu (Some CPU)" in line
    assert "not a git checkout" in prov.summary(dict(record, git_commit=None, git_dirty=None))
