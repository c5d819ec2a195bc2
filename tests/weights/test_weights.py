"""Weight files people actually have — Caffe, MatConvNet, pytorch-fcn, torchvision, fcnseg — loaded into models.

Each foreign format is checked against something independent of fcnseg's reader: the real LeNet caffemodel decoded
by Google's ``protobuf`` library, torchvision's own state dicts, files written in exactly the layout the original
tools write. The full-size VGG tests (one Caffe, one MatConvNet) write ~550 MB files: the weights must fit the real
layer shapes to load at all.
"""
from __future__ import annotations

import os
import pickle
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

import fcnseg
from fcnseg.errors import UserError
from fcnseg.models.fcn import bilinear_kernel
from fcnseg.normalization import CAFFE_BGR, IMAGENET
from fcnseg.weights import detect_format
from fcnseg.weights.caffemodel import caffemodel_state_dict, read_caffemodel, write_caffemodel
from fcnseg.weights.matconvnet import matconvnet_state_dict, read_matconvnet
from fcnseg.weights.pytorch_fcn import to_pytorch_fcn

# The authors' layer names (VGG's ILSVRC prototxts), written out here rather than taken from fcnseg
VGG16_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv4_1", "conv4_2",
               "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
VGG19_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4", "conv4_1",
               "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4"]
FCN8S_HEAD = ["score_fr", "score_pool3", "score_pool4", "upscore2", "upscore8", "upscore_pool4"]
LENET = {"conv1": [(20, 1, 5, 5), (20,)], "conv2": [(50, 20, 5, 5), (50,)], "ip1": [(500, 800), (500,)],
         "ip2": [(10, 500), (10,)]}


# ------------------------------------------------------------------------------------------------ helpers, fixtures

def caffe_pb2():
    """The caffe.proto messages that hold weights, built with Google's protobuf library (field numbers from BVLC
    caffe.proto): an independent decoder and encoder to check ours against. ``packed`` picks the encoding of
    repeated numbers."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto

    def build(packed: bool):
        fd = descriptor_pb2.FileDescriptorProto(name=f"caffe_subset_{packed}.proto", package="caffe", syntax="proto2")
        messages = {
            "BlobShape": [("dim", 1, F.TYPE_INT64, True, None)],
            "BlobProto": [("num", 1, F.TYPE_INT32, False, None), ("channels", 2, F.TYPE_INT32, False, None),
                          ("height", 3, F.TYPE_INT32, False, None), ("width", 4, F.TYPE_INT32, False, None),
                          ("data", 5, F.TYPE_FLOAT, True, None), ("diff", 6, F.TYPE_FLOAT, True, None),
                          ("shape", 7, F.TYPE_MESSAGE, False, "BlobShape"),
                          ("double_data", 8, F.TYPE_DOUBLE, True, None)],
            "LayerParameter": [("name", 1, F.TYPE_STRING, False, None), ("type", 2, F.TYPE_STRING, False, None),
                               ("blobs", 7, F.TYPE_MESSAGE, True, "BlobProto")],
            "V0LayerParameter": [("name", 1, F.TYPE_STRING, False, None), ("type", 2, F.TYPE_STRING, False, None),
                                 ("blobs", 50, F.TYPE_MESSAGE, True, "BlobProto")],
            "V1LayerParameter": [("layer", 1, F.TYPE_MESSAGE, False, "V0LayerParameter"),
                                 ("name", 4, F.TYPE_STRING, False, None), ("type", 5, F.TYPE_INT32, False, None),
                                 ("blobs", 6, F.TYPE_MESSAGE, True, "BlobProto")],
            "NetParameter": [("name", 1, F.TYPE_STRING, False, None),
                             ("layers", 2, F.TYPE_MESSAGE, True, "V1LayerParameter"),
                             ("layer", 100, F.TYPE_MESSAGE, True, "LayerParameter")],
        }
        for mname, fields in messages.items():
            m = fd.message_type.add(name=mname)
            for fname, number, ftype, repeated, tname in fields:
                f = m.field.add(name=fname, number=number, type=ftype,
                                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
                if tname:
                    f.type_name = f".caffe.{tname}"
                if repeated and ftype != F.TYPE_MESSAGE:
                    f.options.packed = packed
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fd)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))

    return build(True), build(False)


def pb_layers(net) -> dict[str, list[np.ndarray]]:
    """protobuf NetParameter → {name: [arrays]} (layers with blobs), shapes from BlobShape."""
    return {layer.name: [np.array(b.data, np.float32).reshape(tuple(b.shape.dim)) for b in layer.blobs]
            for layer in net.layer if layer.blobs}


def group_layers(state: dict[str, torch.Tensor]) -> dict[str, list[np.ndarray]]:
    """pytorch-fcn state dict (Caffe layer names) → caffemodel layers: [weight, bias] or [weight]."""
    layers: dict[str, list[np.ndarray]] = {}
    for key, value in state.items():
        layer, param = key.rsplit(".", 1)
        layers.setdefault(layer, []).insert(0 if param == "weight" else 1, value.numpy())
    return layers


def build(arch="fcn8s", **kw) -> torch.nn.Module:
    return fcnseg.build_model(arch, **{"num_classes": 3, **kw})


@pytest.fixture(scope="module")
def fcn8s_vgg16():
    """An FCN-8s VGG16 (caffe geometry, 3 classes) with every tensor random — head included, so nothing equals a
    fresh model's initialisation by accident. Read only."""
    g = torch.Generator().manual_seed(0)
    model = build(geometry="caffe")
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    return model


@pytest.fixture(scope="module")
def tv_vgg16():
    torch.manual_seed(1)
    return torchvision.models.vgg16(weights=None).state_dict()


def assert_same(state: dict[str, torch.Tensor], model: torch.nn.Module, keys=None) -> None:
    own = model.state_dict()
    for k in keys if keys is not None else state:
        assert torch.equal(own[k], state[k]), k


# ------------------------------------------------------------------------------------------------ caffemodel reader

@pytest.fixture
def lenet(shared):
    path = shared / "models" / "caffe-lenet" / "lenet_iter_10000.caffemodel"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_real_lenet_caffemodel(lenet):
    ours = read_caffemodel(lenet)
    assert {k: [b.shape for b in v] for k, v in ours.items()} == LENET
    for blobs in ours.values():
        for b in blobs:
            assert b.dtype == np.float32 and np.isfinite(b).all() and np.abs(b).max() > 0


def test_real_lenet_caffemodel_matches_protobuf(lenet):
    path = lenet
    ours = read_caffemodel(path)
    packed, _ = caffe_pb2()
    net = packed()
    net.ParseFromString(path.read_bytes())
    reference = pb_layers(net)
    assert list(reference) == list(ours)
    for name, blobs in reference.items():
        for ref, got in zip(blobs, ours[name], strict=True):
            np.testing.assert_array_equal(got, ref)


def test_lenet_round_trip_through_writer(lenet, tmp_path):
    layers = read_caffemodel(lenet)
    packed, _ = caffe_pb2()
    for v1 in (False, True):
        out = tmp_path / f"lenet_v1_{v1}.caffemodel"
        write_caffemodel(out, layers, v1=v1)
        again = read_caffemodel(out)
        assert list(again) == list(layers)
        for name in layers:
            for a, b in zip(layers[name], again[name], strict=True):
                assert a.shape == b.shape and np.array_equal(a, b)
        net = packed()
        net.ParseFromString(out.read_bytes())  # Google's decoder reads what we wrote
        if v1:
            assert [(l.name, l.type, [(b.num, b.channels, b.height, b.width) for b in l.blobs]) for l in net.layers] \
                == [("conv1", 4, [(20, 1, 5, 5), (1, 1, 1, 20)]), ("conv2", 4, [(50, 20, 5, 5), (1, 1, 1, 50)]),
                    ("ip1", 14, [(1, 1, 500, 800), (1, 1, 1, 500)]), ("ip2", 14, [(1, 1, 10, 500), (1, 1, 1, 10)])]
            assert np.array_equal(np.array(net.layers[2].blobs[0].data, np.float32), layers["ip1"][0].reshape(-1))
        else:
            assert [l.type for l in net.layer] == ["Convolution", "Convolution", "InnerProduct", "InnerProduct"]
            ref = pb_layers(net)
            for name in layers:
                for a, b in zip(layers[name], ref[name], strict=True):
                    assert np.array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet_v1_False.caffemodel", "lenet_v1_True.caffemodel"]


def test_reader_accepts_unpacked_v0_and_double_blobs(tmp_path):
    """Encodings Caffe's own writer does not produce today but older tools did: unpacked repeated floats and dims,
    the V0 layer nested in a V1 layer (2014 model-zoo files), double_data — all written by Google's encoder."""
    _, unpacked = caffe_pb2()
    rng = np.random.default_rng(0)
    w, b, d = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal(4), rng.standard_normal((2, 5))
    net = unpacked()
    layer = net.layer.add(name="conv_a", type="Convolution")
    layer.blobs.add(data=w.reshape(-1).tolist()).shape.dim.extend(w.shape)
    layer.blobs.add(data=b.tolist()).shape.dim.extend(b.shape)
    net.layer.add(name="relu_a", type="ReLU")
    layer = net.layer.add(name="fc_double", type="InnerProduct")
    layer.blobs.add(double_data=d.reshape(-1).tolist()).shape.dim.extend(d.shape)
    v0 = net.layers.add().layer
    v0.name, v0.type = "conv_v0", "conv"
    v0.blobs.add(num=4, channels=3, height=2, width=2, data=w.reshape(-1).tolist())
    v0.blobs.add(num=1, channels=1, height=1, width=4, data=b.tolist())
    path = tmp_path / "mixed.caffemodel"
    path.write_bytes(net.SerializeToString())
    layers = read_caffemodel(path)
    assert list(layers) == ["conv_v0", "conv_a", "fc_double"]  # V1 `layers` (field 2) precede field 100 in the file
    np.testing.assert_array_equal(layers["conv_a"][0], w.astype(np.float32))
    np.testing.assert_array_equal(layers["conv_a"][1], b.astype(np.float32))
    assert layers["fc_double"][0].dtype == np.float64 and np.array_equal(layers["fc_double"][0], d)
    np.testing.assert_array_equal(layers["conv_v0"][0], w.astype(np.float32))
    assert layers["conv_v0"][1].shape == (4,)


@pytest.mark.parametrize("cut", [1, 7, 500, -3])
def test_truncated_caffemodel_is_one_line_error(tmp_path, cut):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, {"conv1_1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)]})
    data = good.read_bytes()
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(data[:cut])
    with pytest.raises(UserError) as e:
        read_caffemodel(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_non_caffe_files_are_refused(tmp_path):
    text = tmp_path / "deploy.prototxt"
    text.write_text('name: "FCN"\nlayer { name: "conv1_1" type: "Convolution" }\n')
    assert detect_format(text) == "caffemodel"  # the fallback: the decoder must then say what is wrong
    with pytest.raises(UserError, match="deploy.prototxt"):
        read_caffemodel(text)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="no Caffe layers"):
        read_caffemodel(empty)


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "x.caffemodel"
    with pytest.raises(ValueError, match="at most 4"):
        write_caffemodel(path, {"a": [np.zeros((1, 1, 1, 1, 2), np.float32)]}, v1=True)
    assert list(tmp_path.iterdir()) == []  # neither a partial file nor a temporary left behind


# ------------------------------------------------------------------------------------------------ caffemodel → model

def test_authors_fcn8s_caffemodel_round_trip(fcn8s_vgg16, tmp_path):
    """The authors' voc-fcn8s layout (convolutional fc6/fc7, head names of their net.py) → identical tensors; into a
    model with another class count, only the class-dependent layers are re-initialised."""
    source = fcn8s_vgg16.state_dict()
    layers = group_layers(to_pytorch_fcn(fcn8s_vgg16))
    assert set(layers) == set(VGG16_CONVS) | {"fc6", "fc7"} | set(FCN8S_HEAD)
    assert layers["fc6"][0].shape == (4096, 512, 7, 7) and len(layers["upscore8"]) == 1  # deconvolutions: no bias
    path = tmp_path / "fcn8s-heavy-pascal.caffemodel"
    write_caffemodel(path, layers)
    del layers
    assert detect_format(path) == "caffemodel"

    model = build(geometry="caffe")
    report = fcnseg.load_weights(model, path)
    assert report["missing"] == [] and report["unexpected"] == [] and report["reinitialized"] == []
    assert report["loaded"] == len(source)
    assert_same(source, model)
    assert model.normalization == CAFFE_BGR
    del model

    five = build(num_classes=5, geometry="caffe")
    report = fcnseg.load_weights(five, path)
    assert report["reinitialized"] == sorted(FCN8S_HEAD)
    assert_same(source, five, [k for k in source if k.startswith("backbone.")])
    assert five.score_fr.weight.abs().sum() == 0 and five.score_fr.weight.shape == (5, 4096, 1, 1)
    assert torch.equal(five.upscore8.weight, bilinear_kernel(5, 16))
    with pytest.raises(UserError, match="score"):
        fcnseg.load_weights(five, path, strict_classes=True)


def test_ilsvrc_vgg16_v1_caffemodel(tv_vgg16, tmp_path):
    """VGG_ILSVRC_16_layers.caffemodel: V1 layers, legacy 4-D blob shapes, fc6/fc7 as InnerProduct, fc8 extra."""
    convs = [k[:-len(".weight")] for k in tv_vgg16 if k.startswith("features.") and k.endswith(".weight")]
    layers = {name: [tv_vgg16[f"{m}.weight"].numpy(), tv_vgg16[f"{m}.bias"].numpy()]
              for name, m in zip(VGG16_CONVS, convs, strict=True)}
    for name, m in (("fc6", "classifier.0"), ("fc7", "classifier.3"), ("fc8", "classifier.6")):
        layers[name] = [tv_vgg16[f"{m}.weight"].numpy(), tv_vgg16[f"{m}.bias"].numpy()]
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_caffemodel(path, layers, v1=True)
    assert read_caffemodel(path)["fc6"][0].shape == (4096, 25088)  # stored 1x1x4096x25088

    model = build("fcn32s")
    report = fcnseg.load_weights(model, path)
    assert sorted(report["unexpected"]) == ["fc8.bias", "fc8.weight"]
    assert sorted(report["missing"]) == ["score_fr.bias", "score_fr.weight", "upscore.weight"]
    own = model.state_dict()
    for name, m in zip(VGG16_CONVS, convs):
        assert torch.equal(own[f"backbone.{m}.weight"], tv_vgg16[f"{m}.weight"]), name
        assert torch.equal(own[f"backbone.{m}.bias"], tv_vgg16[f"{m}.bias"]), name
    assert torch.equal(own["backbone.fc6.weight"], tv_vgg16["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(own["backbone.fc7.weight"], tv_vgg16["classifier.3.weight"].view(4096, 4096, 1, 1))
    assert torch.equal(own["backbone.fc7.bias"], tv_vgg16["classifier.3.bias"])
    assert model.normalization == CAFFE_BGR


def test_model_zoo_head_names(fcn8s_vgg16, tmp_path):
    """The 2014 model-zoo FCN-8s names (score-fr, score2, score-pool4, score4, score-pool3, upsample) and
    PASCAL-Context's score59 land on the same layers as today's names."""
    ours = fcn8s_vgg16.state_dict()
    legacy = {"score-fr": "score_fr", "score2": "upscore2", "score-pool4": "score_pool4", "score4": "upscore_pool4",
              "score-pool3": "score_pool3", "upsample": "upscore8"}
    layers = {old: [ours[f"{new}.weight"].numpy()] + ([ours[f"{new}.bias"].numpy()] if f"{new}.bias" in ours else [])
              for old, new in legacy.items()}
    path = tmp_path / "fcn-8s-pascal.caffemodel"
    write_caffemodel(path, layers, v1=True)
    state = caffemodel_state_dict(fcn8s_vgg16, path)
    assert sorted(state) == sorted(k for k in ours if k.split(".")[0] in legacy.values())
    for k, v in state.items():
        assert torch.equal(v, ours[k]), k
    write_caffemodel(path, {"score59": [ours["score_fr.weight"].numpy(), ours["score_fr.bias"].numpy()]})
    assert sorted(caffemodel_state_dict(fcn8s_vgg16, path)) == ["score_fr.bias", "score_fr.weight"]


def test_caffemodel_into_non_vgg_model(lenet):
    with pytest.raises(UserError, match="resnet18") as e:
        fcnseg.load_weights(build(backbone="resnet18"), lenet)
    assert str(lenet) in str(e.value)


# ------------------------------------------------------------------------------------------------ MatConvNet

def mat_layer(name, kernel=None, bias=None, kind="conv"):
    layer = {"name": name, "type": kind}
    if kind == "conv":
        weights = np.empty((1, 2), dtype=object)  # a 1x2 cell, as MatConvNet saves it
        weights[0, 0], weights[0, 1] = kernel, bias
        layer["weights"] = weights
    return layer


def save_simplenn(path, layers, average_image, *, meta=True):
    import scipy.io
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    norm = {"averageImage": average_image, "keepAspect": True, "interpolation": "bilinear"}
    variables = {"layers": cell, **({"meta": {"normalization": norm}} if meta else {"normalization": norm})}
    scipy.io.savemat(path, variables)


def test_matconvnet_vgg19_full(tmp_path):
    """imagenet-vgg-verydeep-19.mat's layout with random weights → FCN-8s VGG19: every kernel permuted HxWxINxOUT →
    OUTxINxHxW, biases stored OUTx1, the mean from a HxWx3 averageImage."""
    torch.manual_seed(2)
    tv = torchvision.models.vgg19(weights=None).state_dict()
    convs = [k[:-len(".weight")] for k in tv if k.startswith("features.") and k.endswith(".weight")]
    expected, layers = {}, []
    for i, (name, m) in enumerate(zip(VGG19_CONVS, convs, strict=True)):
        expected[f"backbone.{m}.weight"], expected[f"backbone.{m}.bias"] = tv[f"{m}.weight"], tv[f"{m}.bias"]
        layers += [mat_layer(name, tv[f"{m}.weight"].numpy().transpose(2, 3, 1, 0), tv[f"{m}.bias"].numpy()[:, None]),
                   mat_layer(f"relu{name[4:]}", kind="relu")]
        if name in ("conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"):
            layers.append(mat_layer(f"pool{name[4]}", kind="pool"))
    fc6 = tv["classifier.0.weight"].view(4096, 512, 7, 7)
    fc7 = tv["classifier.3.weight"].view(4096, 4096, 1, 1)
    expected.update({"backbone.fc6.weight": fc6, "backbone.fc6.bias": tv["classifier.0.bias"],
                     "backbone.fc7.weight": fc7, "backbone.fc7.bias": tv["classifier.3.bias"]})
    layers += [mat_layer("fc6", fc6.numpy().transpose(2, 3, 1, 0), tv["classifier.0.bias"].numpy()[None, :]),
               mat_layer("relu6", kind="relu"),
               mat_layer("fc7", fc7.numpy().transpose(2, 3, 1, 0), tv["classifier.3.bias"].numpy()[None, :]),
               mat_layer("relu7", kind="relu"),
               mat_layer("fc8", tv["classifier.6.weight"].view(1000, 4096, 1, 1).numpy().transpose(2, 3, 1, 0),
                         tv["classifier.6.bias"].numpy()[None, :]),
               mat_layer("prob", kind="softmax")]
    del tv
    average = np.random.default_rng(0).uniform(0, 255, (8, 6, 3))
    path = tmp_path / "imagenet-vgg-verydeep-19.mat"
    save_simplenn(path, layers, average)
    probe = layers[0]["weights"][0, 0][0, 1, 2, 3]  # kernel[h=0, w=1, in=2, out=3] of conv1_1
    del layers
    assert detect_format(path) == "matconvnet"

    model = build(backbone="vgg19")
    report = fcnseg.load_weights(model, path)
    assert report["unexpected"] == [] and report["loaded"] == len(expected) == 2 * 18
    assert_same(expected, model)
    assert model.backbone.features[0].weight[3, 2, 0, 1] == probe
    norm = model.normalization
    assert norm.name == "matconvnet" and not norm.bgr and norm.value_range == 255.0 and norm.std == (1, 1, 1)
    np.testing.assert_allclose(norm.mean, average.mean(axis=(0, 1)), rtol=1e-12)


def test_matconvnet_legacy_normalization_and_errors(fcn8s_vgg16, tmp_path):
    rng = np.random.default_rng(0)
    tiny = [mat_layer("conv1_1", rng.standard_normal((3, 3, 3, 2)).astype(np.float32), np.ones((2, 1), np.float32)),
            mat_layer("relu1_1", kind="relu")]
    old = tmp_path / "old.mat"  # pre-beta-17: a top-level 'normalization' struct
    save_simplenn(old, tiny, np.array([[[123.68, 116.779, 103.939]]]), meta=False)
    layers, mean = read_matconvnet(old)
    assert list(layers) == ["conv1_1"] and layers["conv1_1"][0].shape == (3, 3, 3, 2)
    assert mean == pytest.approx((123.68, 116.779, 103.939))
    with pytest.raises(UserError, match="no layer conv1_2 in the file") as e:
        matconvnet_state_dict(fcn8s_vgg16, old)
    assert str(old) in str(e.value)
    small = [mat_layer(n, np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32))
             for n in VGG16_CONVS[1:] + ["fc6", "fc7"]]
    save_simplenn(path := tmp_path / "small.mat", tiny + small, np.zeros((1, 1, 3)))
    with pytest.raises(UserError, match=r"small.mat: layer conv1_1 has a 3x3x3x2 kernel.*3x3x3x64 \(HxWxINxOUT"):
        matconvnet_state_dict(fcn8s_vgg16, path)  # every name is there, the shapes are wrong

    vgg19_names = [mat_layer(n, np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32))
                   for n in VGG19_CONVS + ["fc6", "fc7", "fc8"]]
    save_simplenn(path := tmp_path / "vgg19.mat", vgg19_names, np.zeros((1, 1, 3)))
    with pytest.raises(UserError, match="layer conv3_4 has no counterpart in backbone vgg16 .*looks like vgg19"):
        matconvnet_state_dict(fcn8s_vgg16, path)
    with pytest.raises(UserError, match="resnet18"):
        fcnseg.load_weights(build(backbone="resnet18"), path)

    import scipy.io
    scipy.io.savemat(path := tmp_path / "nolayers.mat", {"weights": np.zeros(3)})
    with pytest.raises(UserError, match="no 'layers' variable") as e:
        read_matconvnet(path)
    assert str(path) in str(e.value)
    scipy.io.savemat(path := tmp_path / "nomean.mat", {"layers": np.array([[tiny[0]]], dtype=object)})
    with pytest.raises(UserError, match="averageImage"):
        read_matconvnet(path)
    data = old.read_bytes()
    (path := tmp_path / "cut.mat").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="cut.mat"):
        matconvnet_state_dict(fcn8s_vgg16, path)


# ------------------------------------------------------------------------------------------------ torch formats

def test_pytorch_fcn_round_trip(fcn8s_vgg16, tmp_path):
    path = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(to_pytorch_fcn(fcn8s_vgg16), path)
    model = build(geometry="caffe")
    report = fcnseg.load_weights(model, path)
    assert report["missing"] == [] and report["unexpected"] == []
    assert_same(fcn8s_vgg16.state_dict(), model)
    assert model.normalization == CAFFE_BGR


def test_fcnseg_round_trip(tmp_path):
    torch.manual_seed(3)
    source = build(backbone="resnet18")
    with torch.no_grad():
        source.score_fr.weight.normal_()  # differs from a fresh model's zeros
    source.normalization = fcnseg.Normalization((1.0, 2.0, 3.0), name="custom-test")
    torch.save(source.state_dict(), bare := tmp_path / "bare.pt")
    torch.save({"model": source.state_dict(), "model_spec": fcnseg.model_spec(source)}, ckpt := tmp_path / "last.pt")
    for path in (bare, ckpt):
        torch.manual_seed(4)
        model = build(backbone="resnet18")
        report = fcnseg.load_weights(model, path)
        assert report["missing"] == [] and report["unexpected"] == []
        assert_same(source.state_dict(), model)
        assert (model.normalization == source.normalization) == (path == ckpt)


def test_truncated_torch_file(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"backbone.x": torch.randn(1000)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="truncated") as e:
        fcnseg.load_weights(build(backbone="resnet18"), path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle-2", "pickle-5"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_is_refused(tmp_path, how):
    marker = tmp_path / "MARKER"
    path = tmp_path / "weights.pth"
    payload = {"backbone.x": torch.zeros(1), "evil": Payload(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    assert detect_format(path) == "torch"
    with pytest.raises(UserError, match="refusing") as e:
        fcnseg.load_weights(build(backbone="resnet18"), path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_torchvision_vgg16_into_fcn8s(tv_vgg16, tmp_path):
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(tv_vgg16, path)
    model = build()
    report = fcnseg.load_weights(model, path)
    assert sorted(report["missing"]) == sorted(f"{n}.{p}" for n in FCN8S_HEAD for p in ("weight", "bias")
                                               if not (n.startswith("upscore") and p == "bias"))
    assert_same({f"backbone.{k}": v for k, v in tv_vgg16.items() if k.startswith("features.")}, model)
    assert torch.equal(model.backbone.fc6.weight, tv_vgg16["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(model.backbone.fc6.bias, tv_vgg16["classifier.0.bias"])
    assert torch.equal(model.backbone.fc7.weight, tv_vgg16["classifier.3.weight"].reshape(4096, 4096, 1, 1))
    assert model.normalization == IMAGENET


def test_pytorch_fcn_vgg16_from_caffe_keeps_caffe_normalisation(tv_vgg16, tmp_path, monkeypatch):
    """pytorch-fcn's vgg16_from_caffe.pth: Caffe's VGG16 (BGR, 0-255 minus the mean pixel) under torchvision's names
    (torchfcn/models/vgg.py). Recognised by its name, by its checksum when renamed, or by format="pytorch-fcn"."""
    import hashlib
    path = tmp_path / "vgg16_from_caffe.pth"
    torch.save(tv_vgg16, path)
    model = build()
    fcnseg.load_weights(model, path)
    assert_same({f"backbone.{k}": v for k, v in tv_vgg16.items() if k.startswith("features.")}, model)
    assert torch.equal(model.backbone.fc7.weight, tv_vgg16["classifier.3.weight"].reshape(4096, 4096, 1, 1))
    assert model.normalization == CAFFE_BGR
    renamed = path.rename(tmp_path / "vgg16.pth")
    model.normalization = IMAGENET
    fcnseg.load_weights(model, renamed, format="pytorch-fcn")
    assert model.normalization == CAFFE_BGR
    fcnseg.load_weights(model, renamed)  # another VGG16 file: torchvision's
    assert model.normalization == IMAGENET
    from fcnseg import weights
    monkeypatch.setattr(weights, "PYTORCH_FCN_VGG16_MD5", hashlib.md5(renamed.read_bytes()).hexdigest())
    fcnseg.load_weights(model, renamed)  # the published file under another name: its checksum
    assert model.normalization == CAFFE_BGR


def test_torchvision_vgg16_features_only(tv_vgg16, tmp_path, caplog):
    """VGG16_Weights.IMAGENET1K_FEATURES: valid features, a classifier of missing values, RGB 0-255 minus the mean
    pixel (torchvision's transforms for it). fc6/fc7 must keep their initialisation, not become NaN."""
    from fcnseg.normalization import VGG16_FEATURES
    state = {k: v.clone() if k.startswith("features.") else torch.full_like(v, float("nan"))
             for k, v in tv_vgg16.items()}
    path = tmp_path / "vgg16_features-amdegroot-88682ab5.pth"
    torch.save(state, path)
    del state
    model = build()
    fc6 = model.backbone.fc6.weight.detach().clone()
    fcnseg.load_weights(model, path)
    assert torch.equal(model.backbone.fc6.weight, fc6) and torch.isfinite(model.backbone.fc7.weight).all()
    assert_same({f"backbone.{k}": v for k, v in tv_vgg16.items() if k.startswith("features.")}, model)
    assert model.normalization == VGG16_FEATURES and "features-only" in caplog.text
    weights = torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES
    assert os.path.basename(weights.url) == path.name
    image = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    mean = torch.tensor(weights.transforms().mean).view(3, 1, 1)
    std = torch.tensor(weights.transforms().std).view(3, 1, 1)
    assert torch.allclose(VGG16_FEATURES(image), (image / 255 - mean) / std, atol=1e-3)


def _head_layers(model, rename=lambda name: name) -> dict[str, list[np.ndarray]]:
    """The head layers of ``model`` (pytorch-fcn / Caffe names) as caffemodel layers."""
    return {rename(k): v for k, v in group_layers(to_pytorch_fcn(model)).items() if k in FCN8S_HEAD}


@pytest.mark.parametrize("container", ["caffemodel", "pytorch-fcn checkpoint", "fcnseg checkpoint"])
def test_at_once_and_staged_fcn8s_weights_do_not_mix(fcn8s_vgg16, tmp_path, container):
    """FCN-8s at-once scales pool4 by 0.01 and pool3 by 0.0001 before scoring them (the authors' net.py, pytorch-fcn's
    FCN8sAtOnce); the staged FCN-8s does not. Same tensor names: what the file says it is decides, or it is refused."""
    def save(atonce: bool):
        path = tmp_path / f"{'atonce' if atonce else 'staged'}-{container.split()[0]}"
        if container == "caffemodel":
            layers = _head_layers(fcn8s_vgg16)
            if atonce:  # Scale layers with constant blobs (voc-fcn8s-atonce/net.py)
                layers |= {"scale_pool4": [np.full(512, 0.01, np.float32)],
                           "scale_pool3": [np.full(256, 1e-4, np.float32)]}
            write_caffemodel(path, layers)
        elif container == "pytorch-fcn checkpoint":
            state = {k: v for k, v in to_pytorch_fcn(fcn8s_vgg16).items() if k.split(".")[0] in FCN8S_HEAD}
            torch.save({"arch": "FCN8sAtOnce" if atonce else "FCN8s", "model_state_dict": state}, path)
        else:
            model = build("fcn8s-atonce" if atonce else "fcn8s", geometry="caffe")
            state = {k: v for k, v in fcn8s_vgg16.state_dict().items() if k.split(".")[0] in FCN8S_HEAD}
            torch.save({"model": state, "model_spec": fcnseg.model_spec(model)}, path)
        return path

    atonce, staged = save(True), save(False)
    with pytest.raises(UserError, match="at-once.*--arch fcn8s-atonce, not fcn8s") as e:
        fcnseg.load_weights(build(geometry="caffe"), atonce)
    assert str(atonce) in str(e.value)
    with pytest.raises(UserError, match="staged.*not fcn8s-atonce"):
        fcnseg.load_weights(build("fcn8s-atonce", geometry="caffe"), staged)
    for arch, path in (("fcn8s-atonce", atonce), ("fcn8s", staged)):
        model = build(arch, geometry="caffe")
        fcnseg.load_weights(model, path)
        assert_same(fcn8s_vgg16.state_dict(), model, [k for k in model.state_dict() if k.split(".")[0] in FCN8S_HEAD])


def test_siftflow_semantic_head_loads(fcn8s_vgg16, tmp_path, caplog):
    """The authors' SIFT Flow nets have two heads, score_fr_sem … and score_fr_geo …: the semantic one is fcnseg's."""
    layers = _head_layers(fcn8s_vgg16, lambda name: f"{name}_sem")
    layers |= {k.replace("_sem", "_geo"): [-a for a in v] for k, v in layers.items()}
    write_caffemodel(path := tmp_path / "siftflow-fcn8s-heavy.caffemodel", layers)
    model = build(geometry="caffe")
    report = fcnseg.load_weights(model, path)
    assert_same(fcn8s_vgg16.state_dict(), model, [k for k in model.state_dict() if k.split(".")[0] in FCN8S_HEAD])
    assert report["unexpected"] and all("_geo" in k for k in report["unexpected"])
    assert "untrained head" not in caplog.text
    write_caffemodel(path, {k: v for k, v in layers.items() if k.endswith("_geo")})
    with pytest.raises(UserError, match="none of its 9 tensors fit this model"):
        fcnseg.load_weights(model, path)  # only the head this model cannot use


def test_siftflow_both_heads_load_into_a_two_head_model(fcn8s_vgg16, tmp_path):
    """Into a model with the heads semantic and geometric, the _sem and _geo layers both load: the semantic logits
    are those of a one-head net holding the _sem layers, the geometric logits those of one holding the _geo layers."""
    torch.manual_seed(3)
    geo_net = build(num_classes=2, geometry="caffe")
    with torch.no_grad():
        for name in geo_net.score_layers():
            getattr(geo_net, name).weight.normal_(0, 0.01)
            getattr(geo_net, name).bias.normal_(0, 0.01)
    layers = _head_layers(fcn8s_vgg16, lambda name: f"{name}_sem") | _head_layers(geo_net, lambda name: f"{name}_geo")
    assert "upscore8_geo" in layers and layers["score_fr_geo"][0].shape == (2, 4096, 1, 1)
    write_caffemodel(path := tmp_path / "siftflow-fcn8s-heavy.caffemodel", layers)
    heads = (("semantic", 3), ("geometric", 2))
    model = build(geometry="caffe", num_classes=None, heads=heads)
    report = fcnseg.load_weights(model, path)
    assert report["unexpected"] == [] and report["reinitialized"] == []
    assert not [k for k in report["missing"] if not k.startswith("backbone.")]
    assert torch.equal(model.upscore8.weight[3:, :3], torch.zeros(2, 3, 16, 16))  # the heads stay apart
    model.backbone.load_state_dict(fcn8s_vgg16.backbone.state_dict())
    geo_net.backbone.load_state_dict(fcn8s_vgg16.backbone.state_dict())
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        both = model.eval()(x)
        assert torch.allclose(both[:, :3], fcn8s_vgg16.eval()(x), rtol=1e-4, atol=1e-6)
        assert torch.allclose(both[:, 3:], geo_net.eval()(x), rtol=1e-4, atol=1e-6)
    write_caffemodel(path, {k: v for k, v in layers.items() if k.endswith("_sem")})
    with pytest.raises(UserError, match="none of its 9 tensors fit this model, e.g. score_fr_sem.weight"):
        fcnseg.load_weights(model, path)  # a head without its partner cannot fill the stacked layers


def test_a_file_whose_head_does_not_fit_says_so(fcn8s_vgg16, tmp_path, caplog):
    layers = {k.replace("score_fr", "score_fr_other"): v for k, v in _head_layers(fcn8s_vgg16).items()
              if k in ("score_fr", "upscore2")}
    layers["conv1_1"] = [t.numpy() for t in (fcn8s_vgg16.backbone.features[0].weight.detach(),
                                             fcn8s_vgg16.backbone.features[0].bias.detach())]
    write_caffemodel(path := tmp_path / "other-head.caffemodel", layers)
    fcnseg.load_weights(build("fcn32s", geometry="caffe"), path)
    assert "untrained head" in caplog.text and "score_fr_other" in caplog.text


def test_a_file_with_nothing_for_the_model_is_refused(tmp_path):
    torch.save({"conv_a.weight": torch.zeros(2, 3, 1, 1), "conv_a.bias": torch.zeros(2)}, path := tmp_path / "x.pth")
    with pytest.raises(UserError, match="none of its 2 tensors fit this model") as e:
        fcnseg.load_weights(build(), path, format="pytorch-fcn")
    assert str(path) in str(e.value)


def test_torchvision_resnet18_into_fcn(fcn8s_vgg16, tmp_path):
    torch.manual_seed(5)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path := tmp_path / "resnet18-f37072fd.pth")
    model = build(backbone="resnet18")
    model.normalization = CAFFE_BGR  # must be replaced by the weights' own
    report = fcnseg.load_weights(model, path)
    assert report["unexpected"] == []
    assert_same({f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}, model)
    assert model.normalization == IMAGENET
    with pytest.raises(UserError, match="resnet18|vgg16|state dict of another"):
        fcnseg.load_weights(fcn8s_vgg16, path)  # a ResNet file into a VGG model: refused before loading


def test_imagenet_offline_names_url_and_cache(tmp_path, monkeypatch):
    """Offline with an empty cache: one line saying what to download and where. The download itself is stubbed to
    fail as it would offline, so the test never fetches 45 MB when a network happens to be there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as e:
        build(backbone="resnet18", pretrained_backbone="imagenet")
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    message = str(e.value)
    assert url in message and str(tmp_path / "hub" / "checkpoints" / os.path.basename(url)) in message
    assert "\n" not in message


@pytest.mark.parametrize("damage", ["truncated", "pickled code"])
def test_imagenet_cache_is_read_safely(tmp_path, monkeypatch, damage):
    """A file in torch's cache is read with weights_only=True (torch.hub would unpickle it): a damaged or tampered
    one ends in one line naming it and saying how to recover, and no code runs."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "MARKER"
    if damage == "truncated":
        torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, cached)
        cached.write_bytes(cached.read_bytes()[:500])
    else:
        torch.save({"conv1.weight": torch.zeros(1), "evil": Payload(marker)}, cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    with pytest.raises(UserError) as e:
        build(backbone="resnet18", pretrained_backbone="imagenet")
    message = str(e.value)
    assert str(cached) in message and f"delete {cached}" in message and "\n" not in message
    assert not marker.exists()


def test_imagenet_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(6)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, cached)
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    model = build(backbone="resnet18", pretrained_backbone="imagenet")
    assert_same({f"backbone.body.{k}": v for k, v in state.items() if not k.startswith("fc.")}, model)
    assert model.normalization == IMAGENET
