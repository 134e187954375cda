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

import os
import re
from collections.abc import Iterable
from typing import Any

import h5py
import keras
import numpy as np

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


def _open_legacy_h5(path: str) -> tuple[h5py.File, h5py.Group, list[str]]:
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
    if layer_names is None:
        handle.close()
        raise ValueError(
            f"weights file {path} has no 'layer_names' attribute: it is not a Keras-2 (legacy h5) weights "
            "file. A Keras 3 '.weights.h5' file loads with model.load_weights(path).")
    return handle, root, layer_names


def _file_entries(root: h5py.Group, layer_names: list[str], model_names: set[str],
                  path: str) -> dict[str, list[tuple[str, str, h5py.Dataset]]]:
    """Owner layer name -> [(group name, weight name, dataset)], in file order.

    The owner of a weight is the layer prefix of its own name ("rpn_conv_shared" for
    "rpn_conv_shared/kernel:0" stored in group "rpn_model") when the model has such a layer,
    otherwise the group name.
    """
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
            prefix = parts[-2] if len(parts) >= 2 else group_name
            owner = prefix if prefix in model_names or group_name not in model_names else group_name
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
                         exclude: Iterable[str] | str | None = None, skip_mismatch: bool = False) -> LoadReport:
    """Loads a Keras-2 h5 weights file into `model` by layer name, nested layers included.

    Args:
        model: a built Keras model or layer (call it once so that its weights exist).
        filepath: the .h5 file (weights-only or full-model Keras-2 file).
        exclude: layer names not to load. Each entry matches a layer name exactly, or as a regular
            expression over the whole name (``re.fullmatch``): "mrcnn_bbox" excludes only
            mrcnn_bbox (not mrcnn_bbox_fc), "res5.*" all of stage 5. A group name (e.g. "rpn_model")
            excludes every weight stored in that group. See `MATTERPORT_HEAD_LAYERS`.
        skip_mismatch: skip (and report) layers whose stored weights do not fit instead of raising.

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
    handle, root, layer_names = _open_legacy_h5(path)
    loaded: list[str] = []
    skipped: list[str] = []
    unmatched: list[str] = []
    assignments: list[tuple[keras.Variable, np.ndarray]] = []
    try:
        entries = _file_entries(root, layer_names, set(model_layers) | all_names, path)
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
