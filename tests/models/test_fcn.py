"""Model tests: parity with pytorch-fcn, shapes on every arch × backbone, strides, parameter count."""
from __future__ import annotations

import math

import pytest
import torch

import fcnseg
from fcnseg.models.backbones import BACKBONES, build_backbone
from fcnseg.models.fcn import ARCHS, PAPER_ARCHS, bilinear_kernel
from fcnseg.weights.pytorch_fcn import to_pytorch_fcn

TORCHFCN_CLASS = {"fcn32s": "FCN32s", "fcn16s": "FCN16s", "fcn8s": "FCN8s", "fcn8s-atonce": "FCN8sAtOnce"}


def randomize_head(model, seed=0):
    """Score layers start at zero (as the authors'); give them random values so parity is non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.score_layers():
            m = getattr(model, name)
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.01)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("arch", PAPER_ARCHS)
def test_caffe_geometry_equals_pytorch_fcn(arch, torchfcn):
    torch.manual_seed(0)
    ours = fcnseg.build_model(arch, num_classes=21, geometry="caffe").eval()
    randomize_head(ours)
    theirs = getattr(torchfcn.models, TORCHFCN_CLASS[arch])(n_class=21).eval()
    theirs.load_state_dict(to_pytorch_fcn(ours))  # strict: every name and shape must match theirs
    for shape in [(1, 3, 227, 311), (2, 3, 200, 150)]:
        x = torch.randn(shape) * 60  # BGR 0-255 minus mean: values of this order
        with torch.no_grad():
            a, b = ours(x), theirs(x)
        assert a.shape == b.shape == (shape[0], 21, shape[2], shape[3])
        assert b.abs().max() > 1e-3  # a non-trivial output
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-4, f"{arch} {shape}: relative error {rel:.2e}"


def test_pytorch_fcn_state_dict_loads_with_load_weights(tmp_path, torchfcn):
    theirs = torchfcn.models.FCN16s(n_class=21)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()
    path = tmp_path / "fcn16s_from_caffe.pth"
    torch.save(theirs.state_dict(), path)
    ours = fcnseg.build_model("fcn16s", num_classes=21, geometry="caffe")
    report = fcnseg.load_weights(ours, path)
    assert report["missing"] == [] and report["reinitialized"] == []
    assert torch.equal(ours.backbone.features[28].weight, theirs.conv5_3.weight)
    assert torch.equal(ours.score_pool4.weight, theirs.score_pool4.weight)
    assert ours.normalization.bgr and ours.normalization.value_range == 255.0
    # training checkpoints wrap the state dict; the aligned geometry shares every name and shape
    torch.save({"epoch": 3, "iteration": 100, "arch": "FCN16s", "model_state_dict": theirs.state_dict(),
                "best_mean_iu": 0.5}, tmp_path / "checkpoint.pth.tar")
    aligned = fcnseg.build_model("fcn16s", num_classes=21, geometry="aligned")
    assert fcnseg.load_weights(aligned, tmp_path / "checkpoint.pth.tar")["missing"] == []
    assert torch.equal(aligned.backbone.fc6.weight, theirs.fc6.weight)


def test_fcn8s_vgg16_has_the_papers_parameter_count():
    model = fcnseg.build_model("fcn8s", num_classes=21)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.1e6, n


def test_upsampling_is_bilinear_and_fixed_unless_asked():
    model = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=3)
    assert torch.equal(model.upscore8.weight, bilinear_kernel(3, 15))  # ResNet's corner grid: odd kernels
    assert not model.upscore8.weight.requires_grad and model.score_fr.weight.requires_grad
    assert model.score_fr.weight.abs().sum() == 0
    learn = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=3, learnable_upsampling=True)
    assert learn.upscore8.weight.requires_grad
    # a 1-D slice of Caffe's upsample_filt for size 4: [0.25, 0.75, 0.75, 0.25]
    k = bilinear_kernel(1, 4)[0, 0]
    assert torch.allclose(k[1], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.75)


def test_aligned_upsampling_reproduces_a_constant_and_a_ramp():
    """With zero-padded k=2s deconvs, an upsampled constant stays constant in the interior, and an aligned head
    reproduces a linear ramp where bilinear interpolation of pixel centres would."""
    up = torch.nn.ConvTranspose2d(1, 1, 16, stride=8, padding=4, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(1, 16))
    x = torch.arange(6.0).view(1, 1, 1, 6).expand(1, 1, 6, 6)
    y = up(x)
    assert y.shape[-1] == 48
    ref = torch.nn.functional.interpolate(x, scale_factor=8, mode="bilinear", align_corners=False)
    assert torch.allclose(y[..., 8:-8, 8:-8], ref[..., 8:-8, 8:-8], atol=1e-5)


def test_fcn4s_adds_the_stride_4_scores_upsampled_bilinearly():
    """FCN-4s = FCN-8s's fusion, ×2, plus score_pool2 on the stride-4 features, ×4. With the coarser score layers at
    zero (a fresh head) the output is score_pool2's map upsampled ×4: ResNet's stride-4 feature j is centred on
    pixel 4j, so this is exactly linear interpolation between those pixels (torch's interpolate with
    align_corners, an independent reference), and the rows and columns past the last feature repeat it."""
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn4s", backbone="resnet18", num_classes=3).eval()
    assert model.score_layers() == ["score_fr", "score_pool4", "score_pool3", "score_pool2"]
    with torch.no_grad():
        model.score_pool2.weight.normal_(0, 0.1)
        model.score_pool2.bias.normal_()
        x = torch.randn(2, 3, 96, 128)
        y = model(x)
        p2 = model.score_pool2(model.backbone(x)[4])
    assert p2.shape[-2:] == (24, 32) and y.shape == (2, 3, 96, 128)
    ref = torch.nn.functional.interpolate(p2, size=(93, 125), mode="bilinear", align_corners=True)
    assert torch.allclose(y[..., :93, :125], ref, atol=1e-5)
    assert torch.allclose(y[..., 93:, :], y[..., 92:93, :], atol=1e-6)  # replicated, not faded towards 0
    assert torch.allclose(y[..., 125:], y[..., 124:125], atol=1e-6)
    # and the stride-8 path is FCN-8s's: with score_pool2 at zero, a constant score map stays constant inside
    with torch.no_grad():
        model.score_pool2.weight.zero_(), model.score_pool2.bias.zero_()
        model.score_fr.bias.fill_(1.0)
        y = model(x)
    assert torch.allclose(y[..., 32:-32, 32:-32], torch.ones(()), atol=1e-5)


def _linearized(model):
    """Every convolution averages its window, BatchNorm is the identity, activations and SE gates vanish and
    max-pooling averages: the net becomes linear with positive weights."""
    from torchvision.ops.misc import SqueezeExcitation
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.reset_parameters(), m.reset_running_stats()
                m.eps = 0.0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MaxPool2d):
                setattr(parent, name, torch.nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                         ceil_mode=child.ceil_mode, count_include_pad=False))
            elif isinstance(child, (torch.nn.ReLU, torch.nn.Hardswish, torch.nn.Hardsigmoid, SqueezeExcitation)):
                setattr(parent, name, torch.nn.Identity())
    return model.eval()


def stream_offsets(model, height=640, width=32):
    """For each score stream alone: the mean input row an interior output pixel draws from, minus its own row.
    The linearised net's output for the input ``row + 1`` over its output for ones, minus 1, is that mean row."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    out = {}
    for stream in model.score_layers():
        with torch.no_grad():
            for name in model.score_layers():
                layer = getattr(model, name)
                layer.weight.fill_(1.0 / layer.weight.shape[1] if name == stream else 0.0)
                layer.bias.zero_()
            ones = model(torch.ones(1, 3, height, width))[0, 0]
            ramp = model((rows + 1).expand(1, 3, height, width))[0, 0]
        shift = (ramp / ones - 1 - rows)[height // 2 - 64:height // 2 + 64, width // 2]  # clear of the borders
        out[stream] = float(shift.mean())
        assert float(shift.max() - shift.min()) < 0.05, (stream, shift)
    return out


@pytest.mark.parametrize("arch, backbone", [("fcn4s", "resnet18"), ("fcn8s", "vgg16"),
                                            ("fcn8s", "mobilenet_v3_large"), ("fcn4s", "inception_v3")])
def test_every_stream_lands_on_the_pixels_its_features_are_centred_on(arch, backbone, monkeypatch):
    """ResNet and MobileNet centre a stride-s feature j on pixel s·j, VGG (2×2 pooling) on s·j + s/2 − ½,
    Inception (unpadded) on s·j + 5, 13, 21, 37: each backbone's head must put every stream's scores back where
    their features came from."""
    avg = torch.nn.functional.avg_pool2d
    monkeypatch.setattr(torch.nn.functional, "max_pool2d",  # Inception's reduction blocks pool functionally
                        lambda x, kernel_size, stride=None, padding=0, *_, **__: avg(x, kernel_size, stride, padding))
    model = _linearized(fcnseg.build_model(arch, backbone=backbone, num_classes=1))
    assert stream_offsets(model) == pytest.approx(dict.fromkeys(model.score_layers(), 0.0), abs=0.05)


def test_the_cell_grid_on_resnet_is_the_old_misaligned_head():
    """Checkpoints from before the grid was declared rebuild the head they were trained with: on ResNet it put
    stride-s scores (s/2 − ½) px late per upsampling step."""
    model = _linearized(fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=1, grid="cell"))
    expected = {"score_fr": -15.5, "score_pool4": -7.5, "score_pool3": -3.5}
    assert stream_offsets(model) == pytest.approx(expected, abs=0.05)


def test_checkpoints_from_before_the_grid_keep_their_head(tmp_path, caplog):
    from fcnseg.train.checkpoint import model_from_checkpoint
    from fcnseg.models import model_spec
    from fcnseg.weights import load_state_into
    torch.manual_seed(0)
    old = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=3, grid="cell").eval()
    randomize_head(old)
    spec = model_spec(old)
    assert spec.pop("grid") == "cell"  # a checkpoint saved before fcnseg declared the grid holds none
    torch.save({"model": old.state_dict(), "model_spec": spec}, tmp_path / "old.pt")
    rebuilt, _ = model_from_checkpoint(tmp_path / "old.pt")
    x = torch.randn(1, 3, 70, 90)
    with torch.no_grad():
        assert rebuilt.grid == "cell" and torch.equal(rebuilt.eval()(x), old(x))  # predicts as it was trained
    # as --init-from for a new model: backbone and score layers load, the kernels stay the new head's
    new = fcnseg.build_model("fcn8s", backbone="resnet18", num_classes=3)
    load_state_into(new, old.state_dict(), "old.pt")
    assert torch.equal(new.score_pool3.weight, old.score_pool3.weight) and new.upscore8.weight.shape[-1] == 15
    assert "keep this model's bilinear kernels" in caplog.text


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(ValueError, match="valid: .*fcn8s/resnet50"):
        fcnseg.build_model("fcn2s", num_classes=3)
    with pytest.raises(ValueError, match="fcn4s/vgg16,"):  # FCN-4s: aligned geometry only
        fcnseg.build_model("fcn4s", backbone="vgg16", geometry="caffe", num_classes=3)
    with pytest.raises(ValueError, match="fcn8s/vgg16/caffe"):
        fcnseg.build_model("fcn8s", backbone="resnet50", geometry="caffe", num_classes=3)
    assert "fcn8s-atonce/mobilenet_v3_large" in fcnseg.list_models()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_declared_strides_and_channels(backbone):
    bb = build_backbone(backbone).eval()
    size = 320
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, size, size))
    assert set(feats) == {4, 8, 16, 32}
    for stride, f in feats.items():
        assert f.shape[1] == bb.out_channels[stride]
        measured = 2 ** round(math.log2(size / f.shape[-1]))
        assert measured == stride, (backbone, stride, f.shape)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_any_size(arch, backbone):
    torch.manual_seed(0)
    model = fcnseg.build_model(arch, backbone=backbone, num_classes=5)
    randomize_head(model)
    x = torch.randn(1, 3, 97, 131, requires_grad=False)
    y = model(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 5, 97, 131)
    y.square().mean().backward()
    for name in model.score_layers():  # every skip reaches the loss
        grad = getattr(model, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    first = next(p for p in model.backbone.parameters() if p.requires_grad)
    assert first.grad is not None and torch.isfinite(first.grad).all()


@pytest.mark.parametrize("stride,border,shift,size", [(4, 1, 0, (28, 35)), (2, 1, 0, (13, 17)), (32, 1, 0, (200, 250)),
                                                    (4, 3, 5, (30, 41)), (2, 2, 1, (15, 18))])
def test_corner_grid_matrices_equal_border_deconvolution_and_crop(stride, border, shift, size):
    """The corner grid's one-matrix-per-axis path gives the numbers of its definition — replicate border, the full
    C×C deconvolution, crop — forward and backward, and so does the path export traces."""
    from fcnseg.models.fcn import Upsample, _fit, bilinear_kernel
    torch.manual_seed(0)
    up = Upsample(5, 5, 2 * stride - 1, stride=stride, bias=False)
    up.weight.data.copy_(bilinear_kernel(5, 2 * stride - 1))
    up.weight.requires_grad_(False)  # fixed, as in a model
    full = torch.nn.ConvTranspose2d(5, 5, 2 * stride - 1, stride=stride, bias=False)
    full.weight.data.copy_(up.weight)
    offset = stride * border + stride - 1 - shift
    x = torch.randn(2, 5, 7, 9, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = up.bordered(x, border, offset, size)
    y2 = _fit(full(torch.nn.functional.pad(x2, (border,) * 4, mode="replicate")), size, offset)
    assert y.shape == y2.shape == (2, 5, *size) and y.is_contiguous() and up._fast[0] == "separable"
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y2)
    y.backward(g), y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-4)
    traced = torch.jit.trace(lambda t: up.bordered(t, border, offset, size), x.detach())
    torch.testing.assert_close(traced(x.detach()), y2.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,padding,output_padding", [(8, 4, 0), (8, 0, 0), (2, 1, 0), (2, 0, 1), (32, 16, 0)])
def test_fixed_upsampling_fast_paths_match_the_full_deconvolution(stride, padding, output_padding):
    """The separable (bilinear) and per-class paths give the full C×C deconvolution's numbers, forward and
    backward, for aligned and caffe padding and either memory format; anything else runs the full layer."""
    from fcnseg.models.fcn import Upsample, bilinear_kernel
    torch.manual_seed(0)
    k = 2 * stride
    up = Upsample(5, 5, k, stride=stride, padding=padding, output_padding=output_padding, bias=False)
    full = torch.nn.ConvTranspose2d(5, 5, k, stride=stride, padding=padding, output_padding=output_padding,
                                    bias=False)

    def check(expected_plan):
        full.weight.data.copy_(up.weight)
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 5, 7, 9).contiguous(memory_format=fmt).requires_grad_()
            x2 = x.detach().clone().requires_grad_()
            y, y2 = up(x), full(x2)
            assert (up._fast[0] if up._fast else None) == expected_plan
            torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
            g = torch.randn_like(y2)
            y.backward(g)
            y2.backward(g)
            torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-4)

    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(5, k))
    up.weight.requires_grad_(False)
    check("separable")
    with torch.no_grad():  # per-class kernels that differ: grouped
        up.weight[1, 1] *= 0.5
    check("grouped")
    with torch.no_grad():  # one kernel, not separable: grouped
        up.weight.copy_(bilinear_kernel(5, k))
        up.weight[torch.arange(5), torch.arange(5), 0, 1] += 0.25
    check("grouped")
    with torch.no_grad():  # a learned (non-diagonal) kernel: the full deconvolution, whatever it holds
        up.weight.copy_(bilinear_kernel(5, k))
        up.weight[0, 1] += 0.5
    check(None)


@pytest.mark.parametrize("padding,kernel,fmt", [(3, 7, "channels_last"), (0, 7, "contiguous"), (3, 7, "contiguous"),
                                                (0, 1, "channels_last"), (0, 1, "contiguous")])
def test_gemm_conv_matches_the_convolution(padding, kernel, fmt):
    """VGG's fc6/fc7 run as one matrix product of patches: same outputs and gradients as nn.Conv2d, either memory
    format, padded (aligned) or not (caffe); traced graphs keep the convolution."""
    from fcnseg.models.backbones.vgg import GemmConv2d
    torch.manual_seed(0)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    gemm = GemmConv2d(16, 24, kernel, padding=padding).to(memory_format=memory_format)
    conv = torch.nn.Conv2d(16, 24, kernel, padding=padding)
    conv.load_state_dict(gemm.state_dict())
    x = torch.randn(2, 16, 9, 11).contiguous(memory_format=memory_format).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, y2 = gemm(x), conv(x2)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y2)
    y.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gemm.weight.grad, conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gemm.bias.grad, conv.bias.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        traced = torch.jit.trace(gemm, x.detach())
    assert any(n.kind() == "aten::_convolution" for n in traced.graph.nodes())
    GemmConv2d.max_patch_bytes, saved = 0, GemmConv2d.max_patch_bytes  # too large a patch matrix: the convolution
    try:
        torch.testing.assert_close(gemm(x.detach()), y2.detach(), rtol=1e-5, atol=1e-5)
    finally:
        GemmConv2d.max_patch_bytes = saved


def test_vgg_fc6_fc7_are_gemm_convs():
    from fcnseg.models.backbones.vgg import GemmConv2d
    from fcnseg.models import build_model
    model = build_model("fcn8s", backbone="vgg16", num_classes=3)
    assert type(model.backbone.fc6) is GemmConv2d and type(model.backbone.fc7) is GemmConv2d


def test_global_context_adds_the_image_level_scores_to_every_pixel():
    torch.manual_seed(0)
    plain = fcnseg.build_model("fcn4s", backbone="resnet18", num_classes=5).eval()
    gc = fcnseg.build_model("fcn4s", backbone="resnet18", num_classes=5, global_context=True).eval()
    missing = gc.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["score_global.bias", "score_global.weight"]
    with torch.no_grad():
        for name in plain.score_layers():  # non-zero scores, so the comparison is not between zero maps
            getattr(plain, name).weight.normal_(0, 0.05)
        gc.load_state_dict(plain.state_dict(), strict=False)
        x = torch.randn(2, 3, 70, 90)
        base = plain(x)
        assert torch.equal(gc(x), base)  # zero-initialised: a fresh branch changes nothing
        gc.score_global.weight.normal_(0, 0.05)
        gc.score_global.bias.copy_(torch.arange(5.0))
        top = gc.backbone(x)[32].mean((2, 3))  # by hand: the averaged stride-32 features through the linear layer
        expect = top @ gc.score_global.weight.T + gc.score_global.bias
        assert torch.allclose(gc(x), base + expect[:, :, None, None], atol=1e-5)
    assert fcnseg.model_spec(gc)["global_context"] is True and "global_context" not in fcnseg.model_spec(plain)
