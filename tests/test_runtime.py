"""Runtime choices: the bf16 probe, and the memory format's auto choice."""
from __future__ import annotations

import pytest
import torch

from fcnseg import runtime
from fcnseg.errors import UserError
from fcnseg.train.config import resolve_config


def test_bf16_probe(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "_native_bf16", lambda: False)  # AVX2: emulated bf16 is never chosen
    runtime.cpu_bf16_faster.cache_clear()
    try:
        assert runtime.cpu_bf16_faster() is False
        assert runtime.resolve_amp(cpu, "auto") == "none" and runtime.resolve_amp(cpu, "bf16") == "bf16"
        monkeypatch.setattr(runtime, "_native_bf16", lambda: True)  # measured: a bool, cached
        runtime.cpu_bf16_faster.cache_clear()
        state = torch.get_rng_state()
        first = runtime.cpu_bf16_faster()
        assert torch.equal(torch.get_rng_state(), state)  # a seeded run's random stream is untouched
        assert isinstance(first, bool) and runtime.cpu_bf16_faster() is first
        assert runtime.resolve_amp(cpu, "auto") == ("bf16" if first else "none")
    finally:
        runtime.cpu_bf16_faster.cache_clear()


def test_channels_last_choice_is_checked(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx2"})
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.resolve_channels_last("auto", cpu, training=True) is False
    assert runtime.resolve_channels_last(None, cpu, training=False) is True  # inference: as fast or faster
    assert runtime.resolve_channels_last("auto", cuda, training=True) is True
    assert runtime.resolve_channels_last(True, cpu, training=True) is True
    with pytest.raises(UserError, match="channels_last must be true, false or auto, got 'sometimes'"):
        runtime.resolve_channels_last("sometimes", cpu, training=True)
    with pytest.raises(UserError, match="channels_last must be true, false or auto"):
        resolve_config(None, None, {"channels_last": "sometimes"})
    assert resolve_config("camvid", None, {}).channels_last == "auto"
