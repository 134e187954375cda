"""Loading Keras-2 h5 weights by name (matterport layout) and keras.applications ResNet weights."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn.config import Config
from mrcnn.modeling.backbone import FPN, ResNet, backbone_layer_names
from mrcnn.modeling.heads import BoxHead, MaskHead
from mrcnn.modeling.rpn import RPNHead
from mrcnn.weights import (
    KNOWN_WEIGHTS,
    MATTERPORT_HEAD_LAYERS,
    WeightsFile,
    WeightsNotAvailableError,
    find_weight_layers,
    imagenet_file_layout,
    imagenet_weights_key,
    iter_layers,
    keras_applications_resnet_name_map,
    load_imagenet_backbone,
    load_keras_applications_backbone,
    load_weights_by_name,
    weights_file_path,
)

NUM_CLASSES = 3
FC_SIZE = 64  # matterport: 1024; smaller here to keep the fixture light
ANCHORS = 3
BLOCKS = {2: 3, 3: 4, 4: 6, 5: 3}
FILTERS = {2: (64, 64, 256), 3: (128, 128, 512), 4: (256, 256, 1024), 5: (512, 512, 2048)}


# ----------------------------------------------------------------------------------------------
# matterport's layout, written out independently of the implementation
def conv_weights(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}/kernel:0", shape), (f"{name}/bias:0", (shape[-1],))]


def bn_weights(name: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{name}/{w}:0", (channels,)) for w in ("gamma", "beta", "moving_mean", "moving_variance")]


def matterport_spec() -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """[(h5 group, [(weight name, shape)])] in matterport's order, with its nested rpn_model group."""
    groups = [("input_image", []), ("zero_padding2d_1", []), ("conv1", conv_weights("conv1", (7, 7, 3, 64))),
              ("bn_conv1", bn_weights("bn_conv1", 64))]
    channels = 64
    for stage, count in BLOCKS.items():
        f1, f2, f3 = FILTERS[stage]
        for index in range(count):
            tag = f"{stage}{'abcdef'[index]}"
            layers = [("2a", (1, 1, channels, f1)), ("2b", (3, 3, f1, f2)), ("2c", (1, 1, f2, f3))]
            if index == 0:
                layers.append(("1", (1, 1, channels, f3)))
            for branch, shape in layers:
                groups.append((f"res{tag}_branch{branch}", conv_weights(f"res{tag}_branch{branch}", shape)))
                groups.append((f"bn{tag}_branch{branch}", bn_weights(f"bn{tag}_branch{branch}", shape[-1])))
            groups.append((f"res{tag}_out", []))
            channels = f3
    for level, channels in ((5, 2048), (4, 1024), (3, 512), (2, 256)):
        groups.append((f"fpn_c{level}p{level}", conv_weights(f"fpn_c{level}p{level}", (1, 1, channels, 256))))
    for level in (2, 3, 4, 5):
        groups.append((f"fpn_p{level}", conv_weights(f"fpn_p{level}", (3, 3, 256, 256))))
    groups.append(("fpn_p6", []))
    groups.append(("rpn_model", conv_weights("rpn_conv_shared", (3, 3, 256, 512))
                   + conv_weights("rpn_class_raw", (1, 1, 512, 2 * ANCHORS))
                   + conv_weights("rpn_bbox_pred", (1, 1, 512, 4 * ANCHORS))))
    groups += [("mrcnn_class_conv1", conv_weights("mrcnn_class_conv1", (7, 7, 256, FC_SIZE))),
               ("mrcnn_class_bn1", bn_weights("mrcnn_class_bn1", FC_SIZE)),
               ("mrcnn_class_conv2", conv_weights("mrcnn_class_conv2", (1, 1, FC_SIZE, FC_SIZE))),
               ("mrcnn_class_bn2", bn_weights("mrcnn_class_bn2", FC_SIZE)),
               ("mrcnn_class_logits", conv_weights("mrcnn_class_logits", (FC_SIZE, NUM_CLASSES))),
               ("mrcnn_bbox_fc", conv_weights("mrcnn_bbox_fc", (FC_SIZE, 4 * NUM_CLASSES))),
               ("mrcnn_bbox", [])]
    for i in range(1, 5):
        groups.append((f"mrcnn_mask_conv{i}", conv_weights(f"mrcnn_mask_conv{i}", (3, 3, 256, 256))))
        groups.append((f"mrcnn_mask_bn{i}", bn_weights(f"mrcnn_mask_bn{i}", 256)))
    groups.append(("mrcnn_mask_deconv", conv_weights("mrcnn_mask_deconv", (2, 2, 256, 256))))
    groups.append(("mrcnn_mask", conv_weights("mrcnn_mask", (1, 1, 256, NUM_CLASSES))))
    groups.append(("some_other_layer", conv_weights("some_other_layer", (1, 1, 4, 4))))
    return groups


def random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if name.endswith(("moving_variance:0", "gamma:0")):
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    if name.endswith("kernel:0"):
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(size=shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return (rng.standard_normal(size=shape, dtype=np.float32) * 0.1).astype(np.float32)


def write_legacy_h5(path: Path, groups, values: dict[str, np.ndarray] | None = None, seed: int = 0,
                    chunk_layer_names: bool = False, full_model: bool = False) -> dict[str, np.ndarray]:
    """Writes a Keras-2 style weights file with h5py; returns {weight name: value}."""
    rng = np.random.default_rng(seed)
    values = dict(values or {})
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        names = [g.encode("utf8") for g, _ in groups]
        if chunk_layer_names:  # how Keras 2 splits attributes larger than the HDF5 header limit
            half = len(names) // 2
            root.attrs["layer_names0"], root.attrs["layer_names1"] = names[:half], names[half:]
        else:
            root.attrs["layer_names"] = names
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.6"
        for group_name, weights in groups:
            group = root.create_group(group_name)
            group.attrs["weight_names"] = [w.encode("utf8") for w, _ in weights]
            for weight_name, shape in weights:
                key = f"{group_name}::{weight_name}"
                if key not in values:
                    values[key] = random_value(weight_name, shape, rng)
                group.create_dataset(weight_name, data=values[key])
    return values


class TinyMaskRCNN(keras.Model):
    """The weight-bearing parts of Mask R-CNN, nested as the real model nests them."""

    def __init__(self) -> None:
        super().__init__(name="tiny_mask_rcnn")
        self.backbone = ResNet("resnet50", name="resnet")
        self.fpn = FPN(256, name="fpn")
        self.rpn = RPNHead(ANCHORS, depth=256)
        self.box_head = BoxHead(NUM_CLASSES, 7, FC_SIZE, name="box_head")
        self.mask_head = MaskHead(NUM_CLASSES, name="mask_head")

    def call(self, images: tf.Tensor) -> list[tf.Tensor]:
        p_maps = self.fpn(self.backbone(images))
        rpn = [self.rpn(p) for p in p_maps]
        pooled = tf.image.resize(p_maps[0], (14, 14))[:, None]  # a stand-in for RoIAlign
        return [p_maps, rpn, self.box_head(pooled[:, :, ::2, ::2][:, :, :7, :7]), self.mask_head(pooled)]


@pytest.fixture(scope="module")
def model() -> TinyMaskRCNN:
    net = TinyMaskRCNN()
    net(tf.zeros([1, 64, 64, 3]))
    return net


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("weights") / "mask_rcnn_fixture.h5"
    return path, write_legacy_h5(path, matterport_spec())


def layer_values(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {w.name: w.numpy() for w in layer.weights}


def stored_for(values: dict[str, np.ndarray], layer_name: str) -> dict[str, np.ndarray]:
    """{short weight name: value} stored for a layer, whatever group holds it."""
    out = {}
    for key, value in values.items():
        weight_name = key.split("::")[1]
        if weight_name.split("/")[0] == layer_name:
            out[weight_name.split("/")[1].split(":")[0]] = value
    return out


def zero_all(model: keras.Model) -> None:
    for w in model.weights:
        w.assign(np.zeros(w.shape, np.float32))


# ----------------------------------------------------------------------------------------------
def test_every_value_lands_in_its_place(model: TinyMaskRCNN, coco_like) -> None:
    path, values = coco_like
    zero_all(model)
    report = load_weights_by_name(model, path)
    layers = find_weight_layers(model)
    assert len(layers) == 106 + 8 + 3 + 6 + 10
    assert sorted(report["loaded"]) == sorted(layers)
    assert report["missing_in_file"] == [] and report["skipped"] == []
    assert report["unmatched_in_file"] == ["some_other_layer"]
    for name, layer in layers.items():
        expected = stored_for(values, name)
        actual = layer_values(layer)
        assert sorted(actual) == sorted(expected), name
        for weight, value in expected.items():
            np.testing.assert_array_equal(actual[weight], value, err_msg=f"{name}/{weight}")
    # The nested RPN group went to our rpn_* layers.
    np.testing.assert_array_equal(model.rpn.conv_shared.kernel.numpy(), values["rpn_model::rpn_conv_shared/kernel:0"])


def test_exclude_names_and_regexes(model: TinyMaskRCNN, coco_like) -> None:
    path, values = coco_like
    zero_all(model)
    report = load_weights_by_name(model, path, exclude=MATTERPORT_HEAD_LAYERS + [r"res5.*", "bn5[a-c]_branch.*"])
    layers = find_weight_layers(model)
    excluded = {"mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_mask"}
    excluded |= {n for n in layers if n.startswith(("res5", "bn5"))}
    assert set(report["skipped"]) == excluded
    assert set(report["loaded"]) == set(layers) - excluded
    for name in excluded:
        assert all(np.all(v == 0) for v in layer_values(layers[name]).values()), name
    # "mrcnn_bbox" matches its whole name only: mrcnn_bbox_fc is excluded by its own entry, and
    # mrcnn_mask does not exclude mrcnn_mask_conv1.
    np.testing.assert_array_equal(layers["mrcnn_mask_conv1"].kernel.numpy(),
                                  values["mrcnn_mask_conv1::mrcnn_mask_conv1/kernel:0"])
    np.testing.assert_array_equal(layers["res4f_branch2c"].kernel.numpy(),
                                  values["res4f_branch2c::res4f_branch2c/kernel:0"])


def test_exclude_group_name(model: TinyMaskRCNN, coco_like) -> None:
    path, _ = coco_like
    zero_all(model)
    report = load_weights_by_name(model, path, exclude=["rpn_model"])
    assert {"rpn_conv_shared", "rpn_class_raw", "rpn_bbox_pred"} <= set(report["skipped"])
    assert np.all(model.rpn.conv_shared.kernel.numpy() == 0)


def test_shape_mismatch_names_layer_and_shapes(model: TinyMaskRCNN, tmp_path: Path) -> None:
    groups = [("conv1", conv_weights("conv1", (7, 7, 3, 64))),
              ("fpn_c5p5", conv_weights("fpn_c5p5", (1, 1, 1024, 256)))]
    path = tmp_path / "bad.h5"
    values = write_legacy_h5(path, groups, seed=1)
    zero_all(model)
    with pytest.raises(ValueError) as info:
        load_weights_by_name(model, path)
    message = str(info.value)
    assert "fpn_c5p5" in message and "kernel" in message
    assert "(1, 1, 1024, 256)" in message and "(1, 1, 2048, 256)" in message
    # Nothing is assigned when the load fails.
    assert np.all(model.backbone.conv1.kernel.numpy() == 0)
    report = load_weights_by_name(model, path, skip_mismatch=True)
    assert report["skipped"] == ["fpn_c5p5"] and report["loaded"] == ["conv1"]
    np.testing.assert_array_equal(model.backbone.conv1.kernel.numpy(), values["conv1::conv1/kernel:0"])
    assert load_weights_by_name(model, path, exclude=["fpn_c5p5"])["skipped"] == ["fpn_c5p5"]


def test_weight_count_mismatch(model: TinyMaskRCNN, tmp_path: Path) -> None:
    path = tmp_path / "count.h5"
    write_legacy_h5(path, [("bn_conv1", bn_weights("bn_conv1", 64)[:2])])
    with pytest.raises(ValueError, match="bn_conv1"):
        load_weights_by_name(model, path)


def test_missing_and_non_h5_files(model: TinyMaskRCNN, tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        load_weights_by_name(model, missing)
    text = tmp_path / "weights.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="weights.h5.*|.*not an HDF5"):
        load_weights_by_name(model, text)
    empty = tmp_path / "keras3.weights.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("layers")
    with pytest.raises(ValueError, match="holds no layer weights: neither a Keras-2 file .*layer_names"):
        load_weights_by_name(model, empty)
    with h5py.File(empty, "a") as f:  # an older Keras 3 file: variables without their layer's name
        f.create_dataset("layers/conv/vars/0", data=np.zeros(3))
    with pytest.raises(ValueError, match="carry no layer names .* load it by structure"):
        load_weights_by_name(model, empty)


def test_full_model_file_and_chunked_attributes(model: TinyMaskRCNN, tmp_path: Path) -> None:
    groups = [("conv1", conv_weights("conv1", (7, 7, 3, 64))), ("bn_conv1", bn_weights("bn_conv1", 64)),
              ("fpn_p6", [])]
    for kwargs in (dict(full_model=True), dict(chunk_layer_names=True)):
        path = tmp_path / f"{sorted(kwargs)[0]}.h5"
        values = write_legacy_h5(path, groups, seed=2, **kwargs)
        zero_all(model)
        report = load_weights_by_name(model, path)
        assert report["loaded"] == ["conv1", "bn_conv1"]
        assert len(report["missing_in_file"]) == len(find_weight_layers(model)) - 2
        np.testing.assert_array_equal(model.backbone.bn_conv1.moving_variance.numpy(),
                                      values["bn_conv1::bn_conv1/moving_variance:0"])


def test_weights_matched_by_name_then_by_order(model: TinyMaskRCNN, tmp_path: Path) -> None:
    bn = bn_weights("bn_conv1", 64)
    groups = [("bn_conv1", [bn[3], bn[0], bn[2], bn[1]]),  # stored out of order: matched by name
              ("conv1", [("conv1_W:0", (7, 7, 3, 64)), ("conv1_b:0", (64,))])]  # unknown names: by order
    path = tmp_path / "order.h5"
    values = write_legacy_h5(path, groups, seed=4)
    zero_all(model)
    assert load_weights_by_name(model, path)["loaded"] == ["bn_conv1", "conv1"]
    for weight in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(getattr(model.backbone.bn_conv1, weight).numpy(),
                                      values[f"bn_conv1::bn_conv1/{weight}:0"])
    np.testing.assert_array_equal(model.backbone.conv1.kernel.numpy(), values["conv1::conv1_W:0"])
    np.testing.assert_array_equal(model.backbone.conv1.bias.numpy(), values["conv1::conv1_b:0"])


def test_unbuilt_model_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "stem.h5"
    write_legacy_h5(path, [("conv1", conv_weights("conv1", (7, 7, 3, 64)))])
    with pytest.raises(ValueError, match="conv1.*build"):
        load_weights_by_name(ResNet("resnet50"), path)


# ----------------------------------------------------------------------------------------------
def test_keras_applications_name_map() -> None:
    r50 = keras_applications_resnet_name_map("resnet50")
    r101 = keras_applications_resnet_name_map("resnet101")
    assert len(r50) == 106 and len(r101) == 2 + 33 * 6 + 4 * 2
    assert r50["conv1_conv"] == "conv1" and r50["conv1_bn"] == "bn_conv1"
    assert r50["conv2_block1_1_conv"] == "res2a_branch2a" and r50["conv2_block1_1_bn"] == "bn2a_branch2a"
    assert r50["conv2_block1_0_conv"] == "res2a_branch1" and r50["conv3_block4_3_bn"] == "bn3d_branch2c"
    assert r101["conv4_block23_2_conv"] == "res4w_branch2b"
    assert len(set(r101.values())) == len(r101)
    assert set(r50.values()) == set(backbone_layer_names("resnet50"))
    assert set(r101.values()) == set(backbone_layer_names("resnet101"))


@pytest.fixture(scope="module")
def keras_resnet50() -> keras.Model:
    net = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    rng = np.random.default_rng(3)
    for w in net.weights:
        value = random_value(f"{w.name}:0", tuple(w.shape), rng)
        # Half the He scale: with random BatchNorm statistics, full-scale kernels grow activations
        # to ~1e6 by C5, and a whole Mask R-CNN on top of them yields non-finite boxes.
        w.assign(value * 0.5 if w.name == "kernel" else value)
    return net


def test_keras_applications_weights_land_in_place(keras_resnet50: keras.Model) -> None:
    ours = ResNet("resnet50", bn_epsilon=1.001e-5)
    ours(tf.zeros([1, 64, 64, 3]))
    report = load_keras_applications_backbone(ours, keras_resnet50)
    assert len(report["loaded"]) == 106 and report["missing_in_file"] == [] and report["unmatched_in_file"] == []
    targets = find_weight_layers(ours)
    for source_name, target_name in keras_applications_resnet_name_map("resnet50").items():
        source = keras_resnet50.get_layer(source_name)
        for sw, tw in zip(source.weights, targets[target_name].weights, strict=True):
            assert sw.name == tw.name
            np.testing.assert_array_equal(sw.numpy(), tw.numpy(), err_msg=f"{source_name} -> {target_name}")

    images = tf.random.stateless_normal([1, 64, 64, 3], seed=(7, 8)) * 30.0
    probe = keras.Model(keras_resnet50.input, [keras_resnet50.get_layer(n).output
                                               for n in ("conv1_relu", "pool1_pool", "conv5_block3_out")])
    stem_relu, pooled, c5 = (t.numpy() for t in probe(images))
    our_relu = keras.ops.relu(ours.bn_conv1(ours.conv1(ours.conv1_pad(images)))).numpy()
    np.testing.assert_allclose(our_relu, stem_relu, rtol=1e-4, atol=1e-4)
    # Same stages 2-5: from keras' pooled stem, our blocks reproduce its C5.
    our_c5 = ours.call_stages(tf.constant(pooled))[3].numpy()
    scale = np.abs(c5).max()
    np.testing.assert_allclose(our_c5 / scale, c5 / scale, atol=1e-4)
    # The stem pooling differs (matterport: "same", keras.applications: pad 1 + "valid"): window i
    # covers rows 2i..2i+2 here and 2i-1..2i+1 there, so full-network outputs differ.
    our_pooled = ours.call_stem(images).numpy()
    np.testing.assert_allclose(our_pooled, np_max_pool_3x3_s2(stem_relu, start=0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled, np_max_pool_3x3_s2(stem_relu, start=-1), rtol=1e-6)
    assert not np.allclose(our_pooled, pooled, atol=1e-3)


def np_max_pool_3x3_s2(x: np.ndarray, start: int) -> np.ndarray:
    """3x3 max-pool, stride 2, window i starting at 2i + start; out-of-range cells ignored."""
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], (h + 1) // 2, (w + 1) // 2, x.shape[3]), x.dtype)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            y0, x0 = max(2 * i + start, 0), max(2 * j + start, 0)
            out[:, i, j] = x[:, y0:2 * i + start + 3, x0:2 * j + start + 3].max(axis=(1, 2))
    return out


def test_layer_tree_walk_reaches_nested_layers(model: TinyMaskRCNN) -> None:
    names = [layer.name for layer in iter_layers(model)]
    for name in ("conv1", "res4f_branch2c", "fpn_p2", "rpn_class_raw", "mrcnn_class_bn2", "mrcnn_mask"):
        assert names.count(name) == 1


# ----------------------------------------------------------------------------------------------
# Starting points: ImageNet backbones (both layouts) and published files
class _TinyMaskRCNNConfig(Config):
    NAME = "weights_tiny"
    NUM_CLASSES = 3
    BACKBONE = "resnet50"
    IMAGES_PER_GPU = 1
    IMAGE_MIN_DIM = IMAGE_MAX_DIM = 64
    RPN_ANCHOR_SCALES = (8, 16, 32, 64, 128)
    PRE_NMS_LIMIT = 200
    POST_NMS_ROIS_INFERENCE = 16
    DETECTION_MAX_INSTANCES = 4
    DETECTION_MIN_CONFIDENCE = 0.0
    TOP_DOWN_PYRAMID_SIZE = 32
    FPN_CLASSIF_FC_LAYERS_SIZE = 32


def write_keras_model_h5(path: Path, net: keras.Model) -> None:
    """Writes `net`'s weights as Keras 2's save_weights did: layer groups, 'layer/weight:0' names."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in net.layers]
        for layer in net.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for name, w in zip(names, layer.weights):
                group.create_dataset(name, data=w.numpy())


@pytest.fixture(scope="module")
def keras_resnet50_h5(keras_resnet50: keras.Model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("imagenet") / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    write_keras_model_h5(path, keras_resnet50)
    return path


def test_imagenet_backbone_from_keras_applications_file(keras_resnet50: keras.Model, keras_resnet50_h5: Path) -> None:
    """A keras.applications-layout file initialises a whole MaskRCNN's backbone, and only it."""
    from mrcnn.model import MaskRCNN

    assert imagenet_file_layout(keras_resnet50_h5) == ("keras_applications", "resnet50")
    model = MaskRCNN(mode="inference", config=_TinyMaskRCNNConfig())
    model.ensure_built()
    image = np.random.default_rng(5).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    # mrcnn_bbox rather than mrcnn_class: an untrained head's softmax can saturate to exactly 1.0 / 0.0.
    names = ["C2", "C5", "P2", "rpn_class", "mrcnn_bbox"]
    before = model.run_graph([image], names)
    layers = find_weight_layers(model)
    heads_before = {n: layer_values(layer) for n, layer in layers.items() if not n.startswith(("res", "bn"))}
    heads_before.pop("conv1")

    report = load_imagenet_backbone(model, keras_resnet50_h5)
    name_map = keras_applications_resnet_name_map("resnet50")
    assert sorted(report["loaded"]) == sorted(name_map.values())
    assert report["missing_in_file"] == [] and report["skipped"] == []
    for source_name, target_name in name_map.items():
        source = keras_resnet50.get_layer(source_name)
        for sw, tw in zip(source.weights, layers[target_name].weights, strict=True):
            assert sw.name == tw.name
            np.testing.assert_array_equal(tw.numpy(), sw.numpy(), err_msg=f"{source_name} -> {target_name}")
    for name, values in heads_before.items():  # FPN, RPN and heads untouched
        for key, value in layer_values(layers[name]).items():
            np.testing.assert_array_equal(value, values[key], err_msg=name)

    after = model.run_graph([image], names)
    for name in names:
        assert not np.allclose(after[name], before[name]), f"{name} did not change"
    # The in-memory route (a keras.applications model object) gives the same model.
    for w in model.backbone.weights:
        w.assign(np.zeros(w.shape, np.float32))
    load_keras_applications_backbone(model, keras_resnet50)
    again = model.run_graph([image], names)
    for name in names:
        np.testing.assert_array_equal(again[name], after[name], err_msg=name)

    # The outputs change *accordingly*: with keras' BatchNorm epsilon, our stages 2-5 inside the
    # Mask R-CNN reproduce keras.applications' stage outputs from the same pooled stem.
    for layer in iter_layers(model.backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1.001e-5
    stage_outputs = ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out")
    probe = keras.Model(keras_resnet50.input, [keras_resnet50.get_layer(n).output
                                               for n in ("pool1_pool",) + stage_outputs])
    pooled, *theirs = (t.numpy() for t in probe(tf.random.stateless_normal([1, 64, 64, 3], seed=(1, 2)) * 30.0))
    ours = [t.numpy() for t in model.backbone.call_stages(tf.constant(pooled))]
    for name, our, their in zip(stage_outputs, ours, theirs, strict=True):
        scale = np.abs(their).max()
        np.testing.assert_allclose(our / scale, their / scale, atol=1e-4, err_msg=name)


def test_get_imagenet_weights_then_load_by_name_as_in_matterport(keras_resnet50_h5: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """matterport's ``model.load_weights(model.get_imagenet_weights(), by_name=True)``: found in review
    missing, and `load_weights(by_name=True)` loaded nothing from keras.applications' layer names."""
    import shutil

    from mrcnn.model import MaskRCNN
    from mrcnn.weights import KNOWN_WEIGHTS, WeightsNotAvailableError

    monkeypatch.setenv("MRCNN_WEIGHTS_DIR", str(tmp_path))
    model = MaskRCNN(mode="inference", config=_TinyMaskRCNNConfig())
    model.ensure_built()
    # Nothing cached and no download asked for: the default for resnet50 is matterport's (fchollet's) file.
    with pytest.raises(WeightsNotAvailableError, match=KNOWN_WEIGHTS["imagenet_fchollet_resnet50"].filename):
        model.get_imagenet_weights(download=False)
    cached = tmp_path / KNOWN_WEIGHTS["imagenet_keras_resnet50"].cache_subdir / KNOWN_WEIGHTS[
        "imagenet_keras_resnet50"].filename
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keras_resnet50_h5, cached)
    path = model.get_imagenet_weights(source="keras", download=False)
    assert Path(path) == cached
    report = model.load_weights(path, by_name=True)
    assert sorted(report["loaded"]) == sorted(keras_applications_resnet_name_map("resnet50").values())
    expected = MaskRCNN(mode="inference", config=_TinyMaskRCNNConfig())
    expected.ensure_built()
    load_imagenet_backbone(expected, keras_resnet50_h5)
    layers, expected_layers = find_weight_layers(model), find_weight_layers(expected)
    for name in report["loaded"]:
        for mine, theirs in zip(layers[name].weights, expected_layers[name].weights, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=name)
    custom = MaskRCNN(mode="inference", config=_TinyMaskRCNNConfig().update(BACKBONE="resnext101_32x4d"))
    with pytest.raises(ValueError, match="no published ImageNet weights for architecture 'resnext101_32x4d'"):
        custom.get_imagenet_weights(download=False)


def test_imagenet_backbone_from_fchollet_file(model: TinyMaskRCNN, tmp_path: Path) -> None:
    """fchollet's layout (our names, Keras-1 weight names such as conv1_W) loads by name; FPN is left alone."""
    backbone = [(g, w) for g, w in matterport_spec() if g in set(backbone_layer_names("resnet50"))]
    renamed = []
    for group, weights in backbone:  # conv1/kernel:0 -> conv1_W:0, bn_conv1/gamma:0 -> bn_conv1_gamma:0 ...
        short = {"kernel": "W", "bias": "b", "moving_variance": "running_std"}
        renamed.append((group, [(f"{group}_{short.get(n.split('/')[1][:-2], n.split('/')[1][:-2])}:0", s)
                                for n, s in weights]))
    renamed.append(("fpn_c5p5", conv_weights("fpn_c5p5", (1, 1, 2048, 256))))
    path = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    values = write_legacy_h5(path, renamed, seed=9)
    assert imagenet_file_layout(path) == ("matterport", "resnet50")
    zero_all(model)
    report = load_imagenet_backbone(model, path)
    assert sorted(report["loaded"]) == sorted(backbone_layer_names("resnet50"))
    np.testing.assert_array_equal(model.backbone.conv1.kernel.numpy(), values["conv1::conv1_W:0"])
    np.testing.assert_array_equal(find_weight_layers(model)["bn4c_branch2b"].moving_variance.numpy(),
                                  values["bn4c_branch2b::bn4c_branch2b_running_std:0"])
    assert np.all(find_weight_layers(model)["fpn_c5p5"].kernel.numpy() == 0)


def test_imagenet_file_layout_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "heads.h5"
    write_legacy_h5(path, [("fpn_c5p5", conv_weights("fpn_c5p5", (1, 1, 2048, 256)))])
    with pytest.raises(ValueError, match="heads.h5.*no ResNet"):
        imagenet_file_layout(path)


def test_resnet50_file_into_resnet101_warns(keras_resnet50_h5: Path) -> None:
    ours = ResNet("resnet101", name="r101")
    ours(tf.zeros([1, 64, 64, 3]))
    with pytest.warns(UserWarning, match="backbone layers .* keep their initial values"):
        report = load_imagenet_backbone(ours, keras_resnet50_h5)
    assert len(report["loaded"]) == 106
    assert "res4w_branch2a" in report["missing_in_file"] and "res4f_branch2a" not in report["missing_in_file"]


def test_weights_file_path_never_downloads_unasked(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotAvailableError) as info:
        weights_file_path("coco", cache_dir=tmp_path)
    message = str(info.value)
    assert KNOWN_WEIGHTS["coco"].url in message and str(tmp_path / "mask_rcnn_coco.h5") in message
    assert "--download" in message
    assert not any(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        weights_file_path("imagenet_keras_resnet50", path=tmp_path / "nope.h5")
    with pytest.raises(ValueError, match="fchollet.*resnet50 only"):
        imagenet_weights_key("resnet101", "fchollet")
    assert imagenet_weights_key("resnet101") == "imagenet_keras_resnet101"
    with pytest.raises(ValueError, match="no published ImageNet weights for architecture 'resnext101_32x4d'"):
        imagenet_weights_key("resnext101_32x4d")


def test_weights_file_path_downloads_when_asked_and_caches(tmp_path: Path) -> None:
    source = tmp_path / "published" / "stem.h5"
    source.parent.mkdir()
    write_legacy_h5(source, [("conv1", conv_weights("conv1", (7, 7, 3, 64)))])
    spec = WeightsFile(source.as_uri(), "stem.h5", "a test stem", cache_subdir="sub")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsNotAvailableError):
        weights_file_path(spec, cache_dir=cache)
    got = weights_file_path(spec, download=True, cache_dir=cache, verbose=0)
    assert got == cache / "sub" / "stem.h5" and got.read_bytes() == source.read_bytes()
    source.unlink()  # now served from the cache
    assert weights_file_path(spec, cache_dir=cache) == got
    assert [p.name for p in got.parent.iterdir()] == ["stem.h5"]  # no partial file left


def test_weights_file_path_offline_names_url_and_destination(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/mask_rcnn_coco.h5"  # the discard port: connection refused, as offline
    spec = WeightsFile(url, "mask_rcnn_coco.h5", "COCO weights")
    with pytest.raises(WeightsNotAvailableError) as info:
        weights_file_path(spec, download=True, cache_dir=tmp_path, verbose=0)
    message = str(info.value)
    assert url in message and str(tmp_path / "mask_rcnn_coco.h5") in message
    assert not (tmp_path / "mask_rcnn_coco.h5").exists()


def test_scratch_training_with_frozen_batchnorm_warns() -> None:
    from mrcnn.weights import warn_if_scratch_with_frozen_batchnorm

    with pytest.warns(UserWarning, match="TRAIN_BN = True"):
        assert warn_if_scratch_with_frozen_batchnorm(SimpleNamespace(TRAIN_BN=False)) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_scratch_with_frozen_batchnorm(SimpleNamespace(TRAIN_BN=True)) is False
        assert warn_if_scratch_with_frozen_batchnorm(SimpleNamespace(TRAIN_BN=None)) is False
