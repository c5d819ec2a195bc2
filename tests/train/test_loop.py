"""Training: exact resume, time budgets, two-step and staged recipes, frozen scopes, EMA, memory savers that train
to the same weights, and what stops a run with a clear error."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import fcnseg
from fcnseg import runtime
from fcnseg.errors import UserError
from fcnseg.train import loop
from fcnseg.train.checkpoint import model_from_checkpoint, read_checkpoint
from fcnseg.train.loop import pixel_loss, train
from fcnseg.viz import plot_run


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}], ids=["plain", "ema"])
def test_resume_auto_continues_exactly(tmp_path, monkeypatch, extra, tiny):
    common = dict(max_iters=8, val_every=3, deterministic=True, arch="fcn8s", seed=7, **extra)
    train(tiny("full", **common), progress=False)
    full = read_checkpoint(tmp_path / "full" / "last.pt")

    real = loop.lr_factor

    def crash_after_6(cfg, iteration, progress):
        if iteration == 6:  # after the checkpoint at iteration 6; iterations 7-8 must be redone on resume
            raise KeyboardInterrupt
        return real(cfg, iteration, progress)

    monkeypatch.setattr(loop, "lr_factor", crash_after_6)
    with pytest.raises(KeyboardInterrupt):
        train(tiny("cut", **common), progress=False)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 6
    monkeypatch.setattr(loop, "lr_factor", real)
    summary = train(tiny("cut", resume="auto", **common), progress=False)
    resumed = read_checkpoint(tmp_path / "cut" / "last.pt")
    assert summary["iteration"] == resumed["iteration"] == full["iteration"] == 8
    assert resumed["finished"] and full["finished"]
    for key in ("model", "raw_model") if extra else ("model",):  # with EMA: the average and the training weights
        for k, v in full[key].items():
            assert torch.equal(v, resumed[key][k]), (key, k)
    if extra:
        assert full["ema_updates"] == resumed["ema_updates"] == 8
        assert not torch.equal(full["model"]["score_fr.weight"], full["raw_model"]["score_fr.weight"])
    # and training did change the weights
    assert not torch.equal(full["model"]["score_fr.weight"], torch.zeros_like(full["model"]["score_fr.weight"]))


def test_training_ema_averages_the_trajectory(tmp_path, tiny):
    """The saved average equals the hand-made average of the weights after steps 1, 2, 3 (constant lr, so runs of
    1, 2 and 3 iterations share their first steps) and `--no-ema` loads the last training weights."""
    common = dict(max_iters=3, val_every=100, deterministic=True, arch="fcn32s", scheduler="constant", seed=3,
                  ema_decay=0.2)
    torch.manual_seed(3)
    expected = {k: v.double() for k, v in fcnseg.build_model("fcn32s", backbone="resnet18",
                                                           num_classes=7).state_dict().items()}
    for n in range(3):
        train(tiny(f"it{n + 1}", **dict(common, max_iters=n + 1)), progress=False)
        raw = read_checkpoint(tmp_path / f"it{n + 1}" / "last.pt")["raw_model"]
        d = min(0.2, (1 + n) / (10 + n))
        for k, v in raw.items():
            expected[k] = v.double() if k.endswith("num_batches_tracked") else d * expected[k] + (1 - d) * v.double()
    ckpt = read_checkpoint(tmp_path / "it3" / "last.pt")
    for k, v in expected.items():
        torch.testing.assert_close(ckpt["model"][k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
    raw_model, _ = model_from_checkpoint(tmp_path / "it3" / "last.pt", ema=False)
    ema_model, _ = model_from_checkpoint(tmp_path / "it3" / "last.pt")
    assert torch.equal(raw_model.state_dict()["score_fr.weight"], ckpt["raw_model"]["score_fr.weight"])
    assert torch.equal(ema_model.state_dict()["score_fr.weight"], ckpt["model"]["score_fr.weight"])
    assert not torch.equal(ckpt["model"]["score_fr.weight"], ckpt["raw_model"]["score_fr.weight"])
    from fcnseg.cli import main  # the command line scores either and records which
    for flag, weights in (([], "ema"), (["--no-ema"], "raw")):
        assert main(["evaluate", str(tmp_path / "it3" / "last.pt"), "--out", str(tmp_path / weights), *flag]) == 0
        assert json.loads((tmp_path / weights / "metrics.json").read_text())["protocol"]["weights"] == weights


def test_the_average_does_not_feed_back_into_training(tmp_path, tiny):
    """A run with ema_decay ends with the same training weights as the run without it (validation, which scores the
    average, included): the CamVid folds score both recipes from one series of runs."""
    common = dict(max_iters=6, val_every=2, deterministic=True, arch="fcn8s", seed=5)
    train(tiny("plain", **common), progress=False)
    train(tiny("ema", ema_decay=0.9, **common), progress=False)
    plain, ema = read_checkpoint(tmp_path / "plain" / "last.pt"), read_checkpoint(tmp_path / "ema" / "last.pt")
    assert plain["model"].keys() == ema["raw_model"].keys()
    for k, v in plain["model"].items():
        assert torch.equal(v, ema["raw_model"][k]), k
    assert not torch.equal(ema["model"]["score_fr.weight"], ema["raw_model"]["score_fr.weight"])


def test_a_budget_that_fits_leaves_the_schedule_to_the_iterations(tmp_path, tiny):
    """Two runs with the same seed and a time budget they do not reach give identical weights (no --deterministic):
    the learning rate never depends on the clock."""
    for name in ("a", "b"):
        train(tiny(name, max_iters=4, val_every=100, arch="fcn32s", time_budget="1h"), progress=False)
    a, b = (read_checkpoint(tmp_path / n / "last.pt") for n in ("a", "b"))
    assert a["follows_clock"] is False and a["iteration"] == 4
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_a_budget_too_short_for_the_iterations_makes_the_schedule_follow_the_clock(tmp_path, tiny):
    train(tiny(max_iters=100_000, val_every=100_000, arch="fcn32s", time_budget="4s", warmup_iters=0),
          progress=False)
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert ckpt["follows_clock"] is True and any(r.get("schedule") == "clock" for r in records)
    assert 0 < ckpt["iteration"] < 100_000
    # poly over the clock: the last step's lr is well below the base (over 100,000 iterations it would be 0.9999;
    # how far below depends on the step time, which a loaded machine stretches: 0.35 was seen with 0.3 asserted)
    assert ckpt["scheduler"]["lr_factor"] < 0.8


def test_two_step_recipe_freezes_then_trains_everything(tmp_path, tiny):
    cfg = tiny(recipe="googlenet-two-step", backbone="inception_v3", max_iters=4, val_every=100,
               crop_size=80, data_options={"length": 8, "size": [80, 96]}, lr=1e-3)
    torch.manual_seed(cfg.seed)
    initial = fcnseg.build_model("fcn8s", backbone="inception_v3", num_classes=7).state_dict()
    train(cfg, progress=False)
    step1 = read_checkpoint(tmp_path / "run" / "step1-head" / "last.pt")
    step2 = read_checkpoint(tmp_path / "run" / "step2-all" / "last.pt")
    assert step1["iteration"] == 1 and step2["iteration"] == 3  # fractions 0.25 / 0.75 of 4
    for k, v in initial.items():
        if k.startswith("backbone."):
            assert torch.equal(step1["model"][k], v), f"frozen {k} changed in step 1"
    assert not torch.equal(step1["model"]["score_fr.weight"], initial["score_fr.weight"])
    conv = "backbone.body.Conv2d_1a_3x3.conv.weight"
    assert not torch.equal(step2["model"][conv], step1["model"][conv]), "step 2 must train the backbone"
    assert read_checkpoint(tmp_path / "run" / "last.pt")["stage"] == "step2-all"


def test_staged_32s_16s_8s(tmp_path, caplog, tiny):
    caplog.set_level("INFO", logger="fcnseg")
    train(tiny(recipe="staged", max_iters=2, val_every=100), progress=False)
    archs = [read_checkpoint(tmp_path / "run" / s / "best.pt")["model_spec"]["arch"] for s in
             ("fcn32s", "fcn16s", "fcn8s")]
    assert archs == ["fcn32s", "fcn16s", "fcn8s"]
    assert read_checkpoint(tmp_path / "run" / "best.pt")["model_spec"]["arch"] == "fcn8s"
    assert f"initialised from {tmp_path / 'run' / 'fcn32s' / 'best.pt'}" in caplog.text
    assert f"initialised from {tmp_path / 'run' / 'fcn16s' / 'best.pt'}" in caplog.text


def test_a_run_level_init_from_starts_the_first_stage_only(tmp_path, caplog, tiny):
    """Every stage inherited --init-from, so fcn16s and fcn8s restarted from it instead of the stage before."""
    train(tiny("seed", arch="fcn32s", max_iters=1, val_every=100), progress=False)
    caplog.set_level("INFO", logger="fcnseg")
    train(tiny(recipe="staged", max_iters=1, val_every=100, init_from=str(tmp_path / "seed" / "last.pt")),
          progress=False)
    starts = [l for l in caplog.text.splitlines() if "initialised from" in l]
    assert len(starts) == 3, starts
    assert str(tmp_path / "seed" / "last.pt") in starts[0]
    assert str(tmp_path / "run" / "fcn32s" / "best.pt") in starts[1]
    assert str(tmp_path / "run" / "fcn16s" / "best.pt") in starts[2]


def test_resuming_a_staged_run_from_one_stage_file_runs_the_stages_after_it(tmp_path, tiny):
    """--resume RUN/fcn16s/last.pt was handed to every stage: fcn8s loaded fcn16s's finished checkpoint, called itself
    finished, and the run ended without an FCN-8s."""
    train(tiny(recipe="staged", max_iters=2, val_every=100), progress=False)
    shutil.rmtree(tmp_path / "run" / "fcn8s")  # killed before the last stage began
    (tmp_path / "run" / "last.pt").unlink()
    summary = train(tiny(recipe="staged", max_iters=2, val_every=100,
                         resume=str(tmp_path / "run" / "fcn16s" / "last.pt")), progress=False)
    final = read_checkpoint(tmp_path / "run" / "last.pt")
    assert final["model_spec"]["arch"] == "fcn8s" and final["iteration"] == 2 and summary["iteration"] == 2


def test_a_negative_ignore_index_is_not_a_bad_label(tmp_path, tiny):
    """ignore_index −1: the crop's padding is −1, which the label check refused as out of range."""
    s = train(tiny(max_iters=2, val_every=100, ignore_index=-1, crop_size=[64, 80]), progress=False)
    assert s["iteration"] == 2


def test_learning_happens(tmp_path, tiny):
    s = train(tiny(max_iters=30, val_every=100, optimizer="adamw", lr=3e-3, arch="fcn8s",
                   data_options={"length": 64, "size": [64, 80]}, crop_size=None), progress=False)
    records = map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in records if "loss" in r]  # training records (validation's loss is under "val")
    assert losses[-1] < 0.75 * losses[0], losses
    assert s["metrics"]["pixel_accuracy"] > 0.5


def test_bad_labels_stop_with_the_file_names(tmp_path, monkeypatch, tiny):
    from fcnseg.data.synthetic import SyntheticDataset
    real = SyntheticDataset.load

    def broken(self, index):
        img, m = real(self, index)
        m[: m.shape[0] // 2] = 42  # wherever the random crop lands, some of it is in the batch
        return img, m

    monkeypatch.setattr(SyntheticDataset, "load", broken)
    with pytest.raises(fcnseg.errors.UserError, match=r"label 42 is outside \[0, 7\).*synthetic\[train"):
        train(tiny(max_iters=2), progress=False)


def test_debug_logs_gradients_tensorboard_and_plot(tmp_path, tiny):
    import json

    train(tiny(max_iters=4, val_every=2, debug=True), progress=False)
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    grads = [r for r in recs if "grad_norms" in r]
    assert grads and "backbone.body.conv1.weight" in grads[0]["grad_norms"]
    assert any("val" in r for r in recs)
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000  # scalars, images and histograms were written
    written = plot_run(tmp_path / "run", tmp_path / "plots")
    assert {p.name for p in written} == {"curves.png", "gradient_flow.png"}


def test_torchvision_fcn_peer_trains_and_reloads(tmp_path, tiny):
    train(tiny(arch="torchvision-fcn", backbone="resnet50", max_iters=2, val_every=100), progress=False)
    model, ckpt = model_from_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["model_spec"]["arch"] == "torchvision-fcn" and model(torch.randn(1, 3, 33, 47)).shape == (1, 7, 33, 47)


def test_global_context_trains_and_reloads(tmp_path, tiny):
    train(tiny(arch="fcn4s", global_context=True, max_iters=3, val_every=100), progress=False)
    model, ckpt = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_spec"]["global_context"] is True
    assert model.score_global.weight.abs().sum() > 0  # trained away from its zero initialisation
    assert model(torch.randn(1, 3, 33, 47)).shape == (1, 7, 33, 47)


def test_activation_checkpointing_trains_to_the_same_weights(tmp_path, tiny):
    common = dict(max_iters=2, val_every=100, deterministic=True, arch="fcn16s")
    train(tiny("plain", **common), progress=False)
    train(tiny("ckpt", activation_checkpointing=True, **common), progress=False)
    a = read_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "ckpt" / "last.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k


def test_decoded_cache_trains_to_the_same_weights(tmp_path, caplog, tiny):
    """Decoding the training set once (a recipe with a fixed resize) changes speed, never the samples."""
    common = dict(max_iters=3, val_every=3, deterministic=True, arch="fcn8s", seed=3, resize=[40, 56],
                  color_jitter=0.2)
    with caplog.at_level("INFO", logger="fcnseg"):
        train(tiny("cached", **common), progress=False)  # cache_decoded: auto
    assert "decoded 16 training samples once" in caplog.text
    train(tiny("plain", cache_decoded=False, **common), progress=False)
    cached = read_checkpoint(tmp_path / "cached" / "last.pt")["model"]
    plain = read_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    for k, v in plain.items():
        assert torch.equal(v, cached[k]), k


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_step_in_backward_trains_to_the_same_weights_and_checkpoints_its_state(tmp_path, optimizer, tiny):
    common = dict(max_iters=3, val_every=100, deterministic=True, arch="fcn8s", optimizer=optimizer,
                  weight_decay=1e-3, bias_lr_mult=2.0, bias_decay=False, momentum=0.9)
    train(tiny("plain", **common), progress=False)
    train(tiny("inbwd", step_in_backward=True, **common), progress=False)
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("plain", "inbwd"))
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(a["model"]["score_fr.weight"], torch.zeros_like(a["model"]["score_fr.weight"]))
    # the optimizer state (momentum / Adam moments) is in the checkpoint, as without step_in_backward
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for i in sa:
        for key in sa[i]:
            torch.testing.assert_close(sa[i][key], sb[i][key], rtol=1e-5, atol=1e-6)


def test_step_in_backward_refuses_what_needs_gradients_after_backward(tmp_path, tiny):
    with pytest.raises(UserError, match="step_in_backward .* accum_steps > 1"):
        train(tiny(max_iters=1, step_in_backward=True, accum_steps=2), progress=False)


@pytest.mark.parametrize("flags, fmt", [({"avx2", "fma"}, "NCHW"), ({"avx2", "avx512f", "avx512_bf16"}, "channels_last")])
def test_channels_last_auto_follows_the_cpu(tmp_path, caplog, monkeypatch, flags, fmt, tiny):
    """channels_last=auto (the default) trains in NCHW on CPUs without AVX-512, where oneDNN's channels_last training
    is slower (measured on an AVX2 EPYC), and in channels_last with AVX-512; true/false override it."""
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: flags)
    caplog.set_level("INFO", logger="fcnseg")
    train(tiny("auto", max_iters=1, val_every=5), progress=False)
    assert f"cpu, {fmt}" in caplog.text
    caplog.clear()
    forced = "NCHW" if fmt == "channels_last" else "channels_last"
    train(tiny("forced", max_iters=1, val_every=5, channels_last=forced == "channels_last"), progress=False)
    assert f"cpu, {forced}" in caplog.text


@pytest.mark.parametrize("faster, shown", [(True, "bf16"), (False, "fp32")])
def test_amp_auto_follows_the_bf16_probe(tmp_path, caplog, monkeypatch, faster, shown, tiny):
    """amp=auto trains in bf16 only where the probe measured bf16 convolutions faster; the config keeps "auto"."""
    monkeypatch.setattr(runtime, "cpu_bf16_faster", lambda: faster)
    caplog.set_level("INFO", logger="fcnseg")
    train(tiny("auto", amp="auto", max_iters=1, val_every=5), progress=False)
    assert f"cpu, NCHW, {shown}" in caplog.text or f"cpu, channels_last, {shown}" in caplog.text
    assert read_checkpoint(tmp_path / "auto" / "last.pt")["config"]["amp"] == "auto"


def test_size_schedule_trains_on_smaller_batches_then_full_size(tmp_path, monkeypatch, tiny):
    seen = []
    real = loop.pixel_loss
    monkeypatch.setattr(loop, "pixel_loss", lambda logits, masks, **kw: seen.append(tuple(masks.shape[-2:]))
                        or real(logits, masks, **kw))
    train(tiny(max_iters=4, val_every=10, size_schedule=[[0, 0.5], [0.5, 1]]), progress=False)
    assert seen == [(20, 20), (20, 20), (40, 40), (40, 40)]
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["size_scale"] for r in log if "size_scale" in r] == [0.5, 1.0]


def test_pixel_loss_of_a_batch_without_labels_is_zero_not_nan():
    """A batch without a labelled pixel (an all-void crop, an unannotated image) has no mean: no gradient, not NaN,
    which would stop training. Real NaNs and the mean over labelled pixels are unchanged."""
    import torch.nn.functional as F
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    loss = pixel_loss(logits, torch.full((2, 4, 5), 255), ignore_index=255)
    assert loss.item() == 0
    loss.backward()
    assert logits.grad is not None and not logits.grad.any()
    masks = torch.zeros(2, 4, 5, dtype=torch.long)  # every pixel of a class whose weight is 0: no weight to divide by
    assert pixel_loss(logits, masks, ignore_index=255, weight=torch.tensor([0.0, 1.0, 1.0])).item() == 0
    bad = logits.detach().clone()
    bad[0, 0, 0, 0] = float("nan")
    assert torch.isnan(pixel_loss(bad, masks, ignore_index=255))
    masks[0] = 255
    assert torch.equal(pixel_loss(logits, masks, ignore_index=255),
                       F.cross_entropy(logits, masks, ignore_index=255))
