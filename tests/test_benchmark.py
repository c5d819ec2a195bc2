"""``fcnseg benchmark`` smoke test: it runs on a tiny model and prints every figure (no timing assertions)."""
from __future__ import annotations

import re

import pytest

from fcnseg.cli.benchmark import parse_size
from fcnseg.cli import main
from fcnseg.errors import UserError


@pytest.mark.parametrize("extra", [["--mode", "infer"], ["--mode", "train", "--checkpointing", "--dtype", "bf16"]])
def test_benchmark_prints_figures(capsys, extra):
    rc = main(["benchmark", "--arch", "fcn32s", "--backbone", "resnet18", "--num-classes", "3", "--size", "48x64",
               "--batch", "2", "--repeats", "2", *extra])
    out = capsys.readouterr().out
    assert rc == 0
    assert "fcn32s/resnet18/aligned" in out and "2×3×48×64" in out
    best, median = map(float, re.search(r"latency\s+min ([\d.]+) ms, median ([\d.]+) ms", out).groups())
    assert 0 < best <= median
    assert float(re.search(r"throughput\s+([\d.]+) images/s", out).group(1)) > 0
    assert float(re.search(r"peak memory\s+(\d+) MiB", out).group(1)) > 0
    assert re.search(r"provenance\s+fcnseg \d+\.\d+\.\d+ \(.+\), torch .+, torchvision .+", out)
    assert "command     fcnseg benchmark --arch fcn32s" in out
    if "--checkpointing" in extra:
        assert "checkpointing" in out and "train" in out


def test_benchmark_rejects_bad_arguments(capsys):
    assert main(["benchmark", "--backbone", "nope", "--size", "32"]) == 2
    assert "unknown model fcn8s/nope/aligned" in capsys.readouterr().err
    assert main(["benchmark", "--dtype", "fp64", "--size", "32"]) == 2
    assert "--dtype must be one of fp32, bf16, fp16" in capsys.readouterr().err
    assert parse_size("500x400") == (500, 400) and parse_size("64") == (64, 64)
    with pytest.raises(UserError, match="500x500"):
        parse_size("big")
