"""Loading weights by layer name: legacy Keras-2 h5 files and keras.applications ResNets.

`load_weights_by_name` reads Keras-2 h5 weight files (matterport's ``mask_rcnn_coco.h5``,
fchollet's ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``) into a Keras 3 model. Unlike
Keras 3's own ``load_weights(by_name=True)`` it looks at *every* layer of the model, nested ones
included, and it resolves each stored weight by the layer prefix of its own name: matterport's
file keeps the RPN's weights under the group ``rpn_model`` with weight names such as
``rpn_conv_shared/kernel:0``, and those go to our layer named ``rpn_conv_shared``.

Legacy h5 layout (what Keras 2 ``save_weights`` writes; a full-model file has the same under the
group ``model_weights``)::

    /                      attrs: layer_names = [b"conv1", b"bn_conv1", ..., b"rpn_model", ...]
    /conv1                 attrs: weight_names = [b"conv1/kernel:0", b"conv1/bias:0"]
    /conv1/conv1/kernel:0  dataset (7, 7, 3, 64)
    /rpn_model             attrs: weight_names = [b"rpn_conv_shared/kernel:0", ...]
    /rpn_model/rpn_conv_shared/kernel:0

`weights_file_path` finds the published files to start from (matterport's ``mask_rcnn_coco.h5``,
the ImageNet ResNets) in a local cache, downloading only when asked; `load_imagenet_backbone` loads
an ImageNet ResNet file in either layout into our backbone.

`keras_applications_resnet_name_map` / `load_keras_applications_backbone` map
keras.applications' ResNet50/ResNet101 layer names (``conv2_block1_1_conv``) onto ours
(``res2a_branch2a``). keras.applications' ResNet v1 has the same Caffe-style layout (stride 2 on the
first 1x1 convolution and on the shortcut of the first block of stages 3-5, biases on every
convolution), so every weight maps one to one. Two differences remain, so outputs are not
identical: its BatchNorm epsilon is 1.001e-5 (ours 1e-3, matterport's; pass
``bn_epsilon=1.001e-5`` to `ResNet` to match), and its stem max-pool pads one pixel on each side
and pools "valid", where matterport pools "same" (padding only at the bottom/right), which shifts
the pooling grid by one pixel. Everything after the stem's pooling is the same computation.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from mrcnn import utils
from mrcnn.modeling.backbone import STAGE_BLOCKS, block_letter

# Layers whose shape depends on the number of classes: exclude them to fine-tune COCO weights on
# another dataset (matterport's list; mrcnn_bbox is weightless in both implementations).
MATTERPORT_HEAD_LAYERS = ["mrcnn_class_logits", "mrcnn_bbox_fc", "mrcnn_bbox", "mrcnn_mask"]

LoadReport = dict[str, list[str]]


# ----------------------------------------------------------------------------------------------
# Walking the model
def iter_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer in `model`'s tree (the model itself first), nested layers included."""
    flatten = getattr(model, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=True, recursive=True))
    # Fallback for objects without Keras 3's private walker: recurse over `.layers`.
    out, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(reversed(list(getattr(layer, "layers", []))))
    return out


def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    flatten = getattr(layer, "_flatten_layers", None)
    if flatten is not None:
        return list(flatten(include_self=False, recursive=False))
    return list(getattr(layer, "layers", []))


def own_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The variables `layer` creates itself (its sublayers' variables excluded), in creation order."""
    nested = {id(w) for child in _children(layer) for w in child.weights}
    return [w for w in layer.weights if id(w) not in nested]


def _short_name(name: str) -> str:
    """'rpn_model/rpn_conv_shared/kernel:0' or 'kernel' -> 'kernel'."""
    return name.split("/")[-1].split(":")[0]


def find_weight_layers(model: keras.layers.Layer) -> dict[str, keras.layers.Layer]:
    """Name -> layer for every layer in `model`'s tree that owns weights.

    Raises:
        ValueError: when two weight-bearing layers share a name (loading by name would be ambiguous).
    """
    found: dict[str, keras.layers.Layer] = {}
    for layer in iter_layers(model):
        if not own_weights(layer):
            continue
        if layer.name in found and found[layer.name] is not layer:
            raise ValueError(f"two weight-bearing layers are named {layer.name!r} in model {model.name!r}: "
                             "weights cannot be loaded by name; rename one of them")
        found[layer.name] = layer
    return found


# ----------------------------------------------------------------------------------------------
# Exclusion patterns
class _Excluder:
    """Layer-name filter: each entry matches a name exactly or as a regex over the whole name."""

    def __init__(self, exclude: Iterable[str] | str | None) -> None:
        if exclude is None:
            entries: list[str] = []
        elif isinstance(exclude, str):
            entries = [exclude]
        else:
            entries = [str(e) for e in exclude]
        self.names = set(entries)
        self.patterns = []
        for entry in entries:
            try:
                self.patterns.append(re.compile(entry))
            except re.error:
                continue  # not a valid regex: the entry still matches its exact name via self.names
        self.active = bool(entries)

    def __call__(self, name: str) -> bool:
        return name in self.names or any(p.fullmatch(name) for p in self.patterns)


# ----------------------------------------------------------------------------------------------
# Legacy h5 reading
def _decode(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _attr_strings(group: h5py.Group, name: str) -> list[str] | None:
    """A list-of-strings attribute, also when Keras 2 split it into name0, name1, ... chunks."""
    if name in group.attrs:
        return [_decode(v) for v in np.atleast_1d(group.attrs[name])]
    if f"{name}0" in group.attrs:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += [_decode(v) for v in np.atleast_1d(group.attrs[f"{name}{chunk}"])]
            chunk += 1
        return values
    return None


def _open_h5(path: str) -> tuple[h5py.File, h5py.Group, list[str] | None]:
    """(file, weights root, layer_names) of a Keras-2 h5 file; layer_names None for a Keras 3 file."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"weights path is a directory, not an h5 file: {path}")
    if not h5py.is_hdf5(path):
        raise ValueError(f"weights file is not an HDF5 (.h5) file: {path}")
    handle = h5py.File(path, "r")
    root: h5py.Group = handle
    layer_names = _attr_strings(handle, "layer_names")
    if layer_names is None and "model_weights" in handle:
        root = handle["model_weights"]
        layer_names = _attr_strings(root, "layer_names")
    return handle, root, layer_names


def _open_legacy_h5(path: str) -> tuple[h5py.File, h5py.Group, list[str]]:
    """`_open_h5` for readers of Keras-2 files only: ValueError for anything else."""
    handle, root, layer_names = _open_h5(path)
    if layer_names is None:
        handle.close()
        raise ValueError(f"weights file {path} has no 'layer_names' attribute: it is not a Keras-2 (legacy h5) "
                         "weights file")
    return handle, root, layer_names


def _keras3_entries(root: h5py.Group, path: str, name_map: dict[str, str] | None = None
                    ) -> dict[str, list[tuple[str, str, h5py.Dataset]]]:
    """Layer name -> [(group path, weight index, dataset)] of a Keras 3 ``.weights.h5`` file.

    Keras 3 stores a layer's own variables as datasets "0", "1", ... of a "vars" group (in the
    order of ``layer.weights``) and records the layer's name in that group's "name" attribute
    (files without it cannot be read by name). The optimizer state our checkpoints
    carry (the top-level "optimizer" group) is not a layer's and is left out.
    """
    rename = name_map or {}
    entries: dict[str, list[tuple[str, str, h5py.Dataset]]] = {}
    unnamed: list[str] = []

    def visit(name: str, item: h5py.Group | h5py.Dataset) -> None:
        if not isinstance(item, h5py.Group) or name.split("/")[-1] != "vars" or not len(item):
            return
        if name.split("/")[0] == "optimizer":
            return
        if "name" not in item.attrs:
            unnamed.append(name)
            return
        layer = _decode(item.attrs["name"])
        entries.setdefault(rename.get(layer, layer), []).extend(
            (name, key, item[key]) for key in sorted(item, key=lambda key: int(key) if key.isdigit() else key))

    root.visititems(visit)
    if not entries and not unnamed:
        raise ValueError(f"weights file {path} holds no layer weights: neither a Keras-2 file (no 'layer_names' "
                         "attribute) nor a Keras 3 .weights.h5 with variable groups")
    if unnamed:
        raise ValueError(f"weights file {path}: its variable groups (e.g. {unnamed[0]!r}) carry no layer names "
                         "(written by an older Keras 3), so it cannot be loaded by name: load it by structure "
                         "with model.load_weights(path) into the model that saved it")
    return entries


def _file_entries(root: h5py.Group, layer_names: list[str], model_names: set[str],
                  path: str, name_map: dict[str, str] | None = None
                  ) -> dict[str, list[tuple[str, str, h5py.Dataset]]]:
    """Owner layer name -> [(group name, weight name, dataset)], in file order.

    The owner of a weight is the layer prefix of its own name ("rpn_conv_shared" for
    "rpn_conv_shared/kernel:0" stored in group "rpn_model") when the model has such a layer,
    otherwise the group name. `name_map` renames file layer names (prefixes and groups) to the
    model's first (e.g. keras.applications' "conv2_block1_1_conv" -> "res2a_branch2a").
    """
    rename = name_map or {}
    entries: dict[str, list[tuple[str, str, h5py.Dataset]]] = {}
    for group_name in layer_names:
        if group_name not in root:
            raise ValueError(f"weights file {path} lists layer {group_name!r} in layer_names but has no such group")
        group = root[group_name]
        for weight_name in _attr_strings(group, "weight_names") or []:
            if weight_name not in group:
                raise ValueError(f"weights file {path}: layer {group_name!r} lists weight {weight_name!r} "
                                 "but has no such dataset")
            parts = weight_name.split("/")
            prefix = rename.get(parts[-2], parts[-2]) if len(parts) >= 2 else rename.get(group_name, group_name)
            mapped_group = rename.get(group_name, group_name)
            owner = prefix if prefix in model_names or mapped_group not in model_names else mapped_group
            entries.setdefault(owner, []).append((group_name, weight_name, group[weight_name]))
    return entries


def _pair_weights(layer_name: str, stored: list[tuple[str, tuple[int, ...]]],
                  variables: list[keras.Variable]) -> list[tuple[int, keras.Variable]] | str:
    """Pairs stored weights (name, shape) with the layer's variables.

    By weight-name suffix (kernel, bias, gamma, beta, moving_mean, moving_variance) when every
    stored name has a counterpart; by order when the counts agree but the names do not (very old
    files name weights e.g. "conv1_W"). Returns [(stored index, variable)] or a problem description.
    """
    if len(stored) != len(variables):
        return (f"layer {layer_name!r}: the file has {len(stored)} weights {[n for n, _ in stored]} but the "
                f"model's layer has {len(variables)} {[_short_name(v.name) for v in variables]}")
    by_name = {_short_name(v.name): v for v in variables}
    stored_short = [_short_name(n) for n, _ in stored]
    if len(by_name) == len(variables) and sorted(stored_short) == sorted(by_name):
        return [(i, by_name[s]) for i, s in enumerate(stored_short)]
    return list(enumerate(variables))


def load_weights_by_name(model: keras.layers.Layer, filepath: str | os.PathLike,
                         exclude: Iterable[str] | str | None = None, skip_mismatch: bool = False,
                         name_map: dict[str, str] | None = None) -> LoadReport:
    """Loads an h5 weights file into `model` by layer name, nested layers included.

    Args:
        model: a built Keras model or layer (call it once so that its weights exist).
        filepath: a Keras-2 .h5 file (weights-only or full model, e.g. matterport's
            ``mask_rcnn_coco.h5``) or a Keras 3 ``.weights.h5`` file (``save_weights`` or a training
            checkpoint of this package: its optimizer state is not read).
        exclude: layer names not to load. Each entry matches a layer name exactly, or as a regular
            expression over the whole name (``re.fullmatch``): "mrcnn_bbox" excludes only
            mrcnn_bbox (not mrcnn_bbox_fc), "res5.*" all of stage 5. A group name (e.g. "rpn_model")
            excludes every weight stored in that group. See `MATTERPORT_HEAD_LAYERS`.
        skip_mismatch: skip (and report) layers whose stored weights do not fit instead of raising.
        name_map: file layer name -> model layer name, applied before matching (layers it does not
            name keep their own name); e.g. `keras_applications_resnet_name_map()`. `exclude`
            and the report use the model's names.

    Returns:
        A report dict: "loaded" (layer names assigned), "skipped" (excluded or, with skip_mismatch,
        mismatched), "missing_in_file" (weight-bearing model layers the file has no weights for; not
        an error, as in by-name loading), "unmatched_in_file" (layers in the file the model lacks).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not an HDF5 file, not a Keras-2 weights file, a weight-bearing layer of the file is
            present but unbuilt in the model, or a shape/count mismatch (naming the layer, the weight
            and both shapes) unless the layer is excluded or skip_mismatch is set. Nothing is assigned
            when an error is raised.
    """
    path = os.fspath(filepath)
    excluded = _Excluder(exclude)
    model_layers = find_weight_layers(model)
    all_names = {layer.name for layer in iter_layers(model)}
    handle, root, layer_names = _open_h5(path)
    loaded: list[str] = []
    skipped: list[str] = []
    unmatched: list[str] = []
    assignments: list[tuple[keras.Variable, np.ndarray]] = []
    try:
        entries = (_file_entries(root, layer_names, set(model_layers) | all_names, path, name_map)
                   if layer_names is not None else _keras3_entries(root, path, name_map))
        for owner, stored in entries.items():
            if excluded(owner) or any(excluded(group) for group, _, _ in stored):
                skipped.append(owner)
                continue
            layer = model_layers.get(owner)
            if layer is None:
                if owner in all_names:
                    raise ValueError(f"layer {owner!r} of model {model.name!r} has no weights yet; build the model "
                                     f"(call it once) before loading {path}")
                unmatched.append(owner)
                continue
            pairs = _pair_weights(owner, [(name, tuple(ds.shape)) for _, name, ds in stored], own_weights(layer))
            problem = pairs if isinstance(pairs, str) else None
            if problem is None:
                for index, variable in pairs:
                    _, name, dataset = stored[index]
                    if tuple(dataset.shape) != tuple(variable.shape):
                        problem = (f"layer {owner!r}: weight {name!r} has shape {tuple(dataset.shape)} in {path} "
                                   f"but the model's {_short_name(variable.name)!r} has shape {tuple(variable.shape)}")
                        break
            if problem is not None:
                if skip_mismatch:
                    skipped.append(owner)
                    continue
                raise ValueError(problem + " (exclude the layer or pass skip_mismatch=True to skip it)")
            for index, variable in pairs:
                assignments.append((variable, np.asarray(stored[index][2][()])))
            loaded.append(owner)
    finally:
        handle.close()
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    in_file = set(loaded) | set(skipped)
    for name in model_layers:
        if excluded(name) and name not in in_file:
            skipped.append(name)
    missing = [name for name in model_layers if name not in in_file and not excluded(name)]
    return {"loaded": loaded, "skipped": skipped, "missing_in_file": missing, "unmatched_in_file": unmatched}


# ----------------------------------------------------------------------------------------------
# keras.applications ResNet
def keras_applications_resnet_name_map(architecture: str = "resnet50") -> dict[str, str]:
    """keras.applications ResNet50/ResNet101 layer name -> our (matterport/Caffe) layer name.

    conv1_conv -> conv1, conv1_bn -> bn_conv1; conv{S}_block{i}_{k}_{conv|bn} ->
    res{S}{letter}_branch{2a|2b|2c} / bn{S}{letter}_branch... for k = 1, 2, 3 and the projection
    shortcut k = 0 -> branch1; block i = 1, 2, ... -> letter a, b, ... (R101 stage 4: a..w).
    """
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"architecture must be one of {sorted(STAGE_BLOCKS)}, got {architecture!r}")
    names = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}
    for stage, count in zip(range(2, 6), STAGE_BLOCKS[architecture]):
        for index in range(count):
            tag = f"{stage}{block_letter(index)}"
            branches = [("1", "2a"), ("2", "2b"), ("3", "2c")] + ([("0", "1")] if index == 0 else [])
            for keras_index, branch in branches:
                source = f"conv{stage}_block{index + 1}_{keras_index}"
                names[f"{source}_conv"] = f"res{tag}_branch{branch}"
                names[f"{source}_bn"] = f"bn{tag}_branch{branch}"
    return names


def load_keras_applications_backbone(model: keras.layers.Layer, keras_model: keras.Model,
                                     architecture: str | None = None) -> LoadReport:
    """Copies a keras.applications ResNet50/ResNet101's weights into our ResNet layers.

    Args:
        model: a built model (or `ResNet` layer) containing our backbone layers.
        keras_model: e.g. ``keras.applications.ResNet50(include_top=False, weights="imagenet")``.
        architecture: "resnet50" / "resnet101"; None infers it from keras_model's layers.

    Returns:
        The report of `load_weights_by_name` ("unmatched_in_file" lists mapped keras layers that our
        model lacks, e.g. stage 4 blocks g..w when copying R101 into R50).

    Raises:
        ValueError: a shape mismatch (naming both layers and shapes) or an unbuilt target layer.
    """
    source_layers = {layer.name: layer for layer in iter_layers(keras_model)}
    if architecture is None:
        architecture = "resnet101" if "conv4_block23_1_conv" in source_layers else "resnet50"
    name_map = keras_applications_resnet_name_map(architecture)
    targets = find_weight_layers(model)
    loaded: list[str] = []
    unmatched: list[str] = []
    assignments: list[tuple[keras.Variable, np.ndarray]] = []
    for source_name, target_name in name_map.items():
        source = source_layers.get(source_name)
        if source is None:
            raise ValueError(f"keras model {keras_model.name!r} has no layer {source_name!r}: not a "
                             f"keras.applications {architecture} (or not built)")
        target = targets.get(target_name)
        if target is None:
            unmatched.append(target_name)
            continue
        values = [(v.name, np.asarray(v.numpy())) for v in own_weights(source)]
        pairs = _pair_weights(target_name, [(n, a.shape) for n, a in values], own_weights(target))
        if isinstance(pairs, str):
            raise ValueError(f"{source_name} -> {pairs}")
        for index, variable in pairs:
            name, value = values[index]
            if value.shape != tuple(variable.shape):
                raise ValueError(f"{source_name}/{name} has shape {value.shape} but our {target_name}/"
                                 f"{_short_name(variable.name)} has shape {tuple(variable.shape)}")
            assignments.append((variable, value))
        loaded.append(target_name)
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    mapped = set(name_map.values())
    missing = [name for name in targets if name not in mapped and _is_backbone_name(name)]
    return {"loaded": loaded, "skipped": [], "missing_in_file": missing, "unmatched_in_file": unmatched}


def _is_backbone_name(name: str) -> bool:
    return name in ("conv1", "bn_conv1") or re.fullmatch(r"(res|bn)\d[a-z]_branch(1|2[abc])", name) is not None


# ----------------------------------------------------------------------------------------------
# Weights to start from: published files, a local cache, download only on request
@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A published weights file.

    Attributes:
        url: where it is published.
        filename: its name in the cache directory (`cache_subdir` below it).
        description: what it holds, for messages.
        cache_subdir: subdirectory of the cache; fchollet's and keras.applications' ResNet-50 files
            share one file name but not their layer names, so they are kept apart.
    """

    url: str
    filename: str
    description: str
    cache_subdir: str = ""


_KERAS_RESNET_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
KNOWN_WEIGHTS: dict[str, WeightsFile] = {
    "coco": WeightsFile(
        "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5",
        "mask_rcnn_coco.h5", "matterport's Mask R-CNN COCO weights (ResNet-101-FPN, 81 classes)"),
    # fchollet's file uses our (Caffe/matterport) layer names: res2a_branch2a, bn_conv1, ...
    "imagenet_fchollet_resnet50": WeightsFile(
        "https://github.com/fchollet/deep-learning-models/releases/download/v0.2/"
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "fchollet's ImageNet ResNet-50 (matterport layer names)", cache_subdir="fchollet"),
    # keras.applications' files use conv2_block1_1_conv-style names (mapped on loading); the
    # default cache directory is the one keras.applications itself downloads into.
    "imagenet_keras_resnet50": WeightsFile(
        _KERAS_RESNET_BASE + "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "keras.applications ImageNet ResNet50"),
    "imagenet_keras_resnet101": WeightsFile(
        _KERAS_RESNET_BASE + "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "keras.applications ImageNet ResNet101"),
}


class WeightsNotAvailableError(FileNotFoundError):
    """A published weights file is not in the cache and may not (or could not) be downloaded."""


def warn_if_scratch_with_frozen_batchnorm(config: Any) -> bool:
    """Warns when a model about to train from random weights has frozen BatchNorm (TRAIN_BN False).

    Frozen BatchNorm, the fine-tuning default, applies the moving statistics, which are identities
    (mean 0, variance 1) before any training: on a random ResNet nothing is normalized and the
    activations grow block after block. Measured on the COCO sample's config (ResNet-50-FPN at 128 px,
    2 COCO images, the same random weights, first step): RPN class loss 9.4 and total loss 47.0
    with frozen BatchNorm, 2.9 and 13.3 with TRAIN_BN. A layer that a stage leaves frozen (the
    backbone under layers="heads") keeps inference-mode BatchNorm even with TRAIN_BN, so training
    from scratch also means training all layers. Call it where a sample starts training without
    weights to load.

    Args:
        config: the training `Config` (its TRAIN_BN: only False warns).
    Returns:
        True when it warned.
    """
    if config.TRAIN_BN is not False:  # True, or None (BatchNorm follows `training`, as matterport's)
        return False
    warnings.warn("training from scratch with TRAIN_BN False: frozen BatchNorm applies untrained moving "
                  "statistics, which normalize nothing on a random backbone; start from pretrained weights "
                  "(imagenet), or set TRAIN_BN = True (--set TRAIN_BN=True) and train all layers (a frozen "
                  "layer's BatchNorm stays in inference mode)", stacklevel=utils.user_stacklevel())
    return True


def default_weights_dir() -> Path:
    """Where published weights are looked for: ``$MRCNN_WEIGHTS_DIR``, else ``~/.keras/models``.

    ``~/.keras/models`` is where keras.applications caches its downloads, so ImageNet ResNets it
    has already fetched are found without a second download.
    """
    configured = os.environ.get("MRCNN_WEIGHTS_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".keras" / "models"


def imagenet_weights_key(architecture: str = "resnet50", source: str = "keras") -> str:
    """The `KNOWN_WEIGHTS` key of an ImageNet ResNet.

    Args:
        architecture: "resnet50" or "resnet101".
        source: "keras" (keras.applications' files, ResNet50 and ResNet101) or "fchollet"
            (matterport's choice; ResNet-50 only).

    Raises:
        ValueError: for an unknown architecture/source or fchollet with ResNet-101.
    """
    if architecture not in STAGE_BLOCKS:
        raise ValueError(f"no published ImageNet weights for architecture {architecture!r} (ResNeXt's are not "
                         f"bundled: start from random weights or your own h5); known: {sorted(STAGE_BLOCKS)}")
    if source == "keras":
        return f"imagenet_keras_{architecture}"
    if source == "fchollet":
        if architecture != "resnet50":
            raise ValueError("fchollet's ImageNet weights exist for resnet50 only; use source='keras' for resnet101")
        return "imagenet_fchollet_resnet50"
    raise ValueError(f"source must be 'keras' or 'fchollet', got {source!r}")


def weights_file_path(weights: str | WeightsFile, path: str | os.PathLike | None = None, download: bool = False,
                      cache_dir: str | os.PathLike | None = None, verbose: int = 1) -> Path:
    """The local path of a published weights file; downloads it only when `download` is set.

    Args:
        weights: a `KNOWN_WEIGHTS` key ("coco", "imagenet_keras_resnet50", ...) or a `WeightsFile`.
        path: a local copy to use instead of the cache (must exist).
        download: fetch the file into the cache when it is not there. Without it nothing is
            downloaded, ever.
        cache_dir: the cache directory (default `default_weights_dir()`).
        verbose: 1 prints what is downloaded, with a progress bar.

    Returns:
        The path of the file.

    Raises:
        FileNotFoundError: `path` is given but does not exist.
        WeightsNotAvailableError (a FileNotFoundError): not cached and `download` is False, or the
            download failed (offline); the message names the URL and where to put the file.
        ValueError: an unknown key.
    """
    if isinstance(weights, str):
        if weights not in KNOWN_WEIGHTS:
            raise ValueError(f"unknown weights {weights!r}; known: {sorted(KNOWN_WEIGHTS)}")
        weights = KNOWN_WEIGHTS[weights]
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise FileNotFoundError(f"{weights.description}: file not found: {local}")
        return local
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_weights_dir()
    target = folder / weights.cache_subdir / weights.filename
    if target.is_file():
        return target
    where = (f"download it from {weights.url} and put it at {target} (or pass its path), or set "
             "MRCNN_WEIGHTS_DIR to the folder that holds it")
    if not download:
        raise WeightsNotAvailableError(
            f"{weights.description} not found at {target}. Downloads happen only when asked "
            f"(download=True, or --download on the command line); otherwise {where}.")
    try:
        _download(weights.url, target, verbose)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise WeightsNotAvailableError(
            f"could not download {weights.description} from {weights.url}: {error}. "
            f"If this machine is offline, {where}.") from error
    return target


def _download(url: str, target: Path, verbose: int) -> None:
    """Fetches `url` into `target` through a temporary file (no half-written file is ever left)."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    if verbose:
        print(f"Downloading {url} to {target}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, disable=not verbose) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
        if not h5py.is_hdf5(partial):
            raise ValueError(f"the file downloaded from {url} is not an HDF5 file")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def imagenet_file_layout(filepath: str | os.PathLike) -> tuple[str, str]:
    """Which ImageNet ResNet layout a Keras-2 h5 file has.

    Returns:
        (layout, architecture): layout "keras_applications" (conv2_block1_1_conv names) or
        "matterport" (res2a_branch2a names, fchollet's file); architecture "resnet50" or
        "resnet101" (from the number of stage-4 blocks).

    Raises:
        FileNotFoundError / ValueError: the file is missing, not a Keras-2 h5 file, or holds no ResNet.
    """
    path = os.fspath(filepath)
    handle, root, layer_names = _open_legacy_h5(path)
    try:
        # Layer names can also hide inside weight names of nested groups: read both.
        names = set(layer_names)
        for group_name in layer_names:
            if group_name in root:
                names.update(w.split("/")[-2] for w in _attr_strings(root[group_name], "weight_names") or []
                             if "/" in w)
    finally:
        handle.close()
    if "conv2_block1_1_conv" in names:
        return "keras_applications", "resnet101" if "conv4_block23_1_conv" in names else "resnet50"
    if "res2a_branch2a" in names:
        return "matterport", "resnet101" if "res4w_branch2a" in names else "resnet50"
    raise ValueError(f"weights file {path} holds no ResNet backbone: expected layer names such as "
                     "'res2a_branch2a' (fchollet/matterport) or 'conv2_block1_1_conv' (keras.applications)")


def keras_applications_name_map(filepath: str | os.PathLike) -> dict[str, str] | None:
    """`keras_applications_resnet_name_map` when `filepath` is a keras.applications ResNet h5 file
    (``conv2_block1_1_conv`` names), else None (any other file, including ones that are not h5)."""
    try:
        layout, architecture = imagenet_file_layout(filepath)
    except ValueError:
        return None
    return keras_applications_resnet_name_map(architecture) if layout == "keras_applications" else None


def load_imagenet_backbone(model: keras.layers.Layer, filepath: str | os.PathLike) -> LoadReport:
    """Initialises our ResNet backbone from an ImageNet ResNet h5 file of either layout.

    fchollet's ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` has our layer names and
    loads by name; keras.applications' files (``conv2_block1_1_conv`` names) go through
    `keras_applications_resnet_name_map`. Only backbone layers (conv1, bn_conv1, res*/bn*) are
    loaded; FPN, RPN and heads keep their values.

    Args:
        model: a built model (e.g. ``MaskRCNN`` after ``ensure_built()``) or a built `ResNet`.
        filepath: the h5 file, e.g. from ``weights_file_path("imagenet_keras_resnet50")``.

    Returns:
        The `load_weights_by_name` report restricted to backbone layers ("missing_in_file": our
        backbone layers the file lacks, e.g. stage-4 blocks g..w when a ResNet-50 file initialises a
        ResNet-101, which also warns).

    Raises:
        FileNotFoundError / ValueError: as `load_weights_by_name`, and for a file holding no ResNet.
    """
    layout, architecture = imagenet_file_layout(filepath)
    name_map = keras_applications_resnet_name_map(architecture) if layout == "keras_applications" else None
    # Everything that is not a backbone layer of ours is left alone, whatever the file holds.
    not_backbone = [name for name in find_weight_layers(model) if not _is_backbone_name(name)]
    report = load_weights_by_name(model, filepath, exclude=not_backbone, name_map=name_map)
    report = {key: [name for name in names if _is_backbone_name(name)] for key, names in report.items()}
    if report["missing_in_file"]:
        warnings.warn(f"{len(report['missing_in_file'])} backbone layers of {model.name!r} have no weights in "
                      f"{os.fspath(filepath)} (an ImageNet {architecture}) and keep their initial values, "
                      f"e.g. {report['missing_in_file'][0]!r}", stacklevel=utils.user_stacklevel())
    return report
