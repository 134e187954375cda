"""Graphs with the weights baked in as constants, for fast repeated inference on fixed weights.

A traced `tf.function` reads every weight from its variable on each call. On CPU that costs twice
over: oneDNN re-lays out ("reorders") each convolution filter into its blocked format on every
call, since a variable may have changed, and under a mixed-precision policy every float32 weight
is cast to bfloat16/float16 on every call. With the values in the graph as constants, Grappler
folds those casts once and oneDNN caches the reordered filters (TF marks a constant filter
`is_filter_const`). The results are those of the variables' values at freezing time: weights
changed afterwards are not seen until the function is frozen again.

The values go in through Keras' `StatelessScope`, which makes every read of a mapped variable
return the given tensor: created inside the trace, each is a Const node of the graph.

`batchnorm_fold` gives the values that fold an inference-mode BatchNorm into the convolution
before it, passed to `freeze` as overrides: the frozen graph then runs one fused convolution
(+ bias + ReLU) where it ran a convolution and a BatchNorm pass over its output.

The price is memory: the traced graph, the runtime's optimized copy and its kernels, and oneDNN's
reordered filters each hold the weights (README, "Optimizing for inference": ResNet-50-FPN's
176 MB of weights added 1.5-2.8 GB of resident memory per frozen graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

_VARIABLE_OPS = ("ReadVariableOp", "VarHandleOp", "ResourceGather", "AssignVariableOp")


class FrozenFunction:
    """A function traced once with its variables' values as graph constants (see `freeze`).

    Attributes:
        concrete: the traced `ConcreteFunction` (its graph holds the weights as Const nodes).
        input_signature: the `tf.TensorSpec` of each positional argument.
    """

    def __init__(self, concrete: Any, input_signature: Sequence[tf.TensorSpec]) -> None:
        self.concrete = concrete
        self.input_signature = list(input_signature)

    def __call__(self, *args: tf.Tensor) -> Any:
        # A clear error, not a shape failure deep in the graph: one traced for another image
        # size has other static sizes (e.g. anchors) built in.
        if len(args) != len(self.input_signature):
            raise TypeError(f"frozen function takes {len(self.input_signature)} tensors, got {len(args)}")
        for index, (arg, spec) in enumerate(zip(args, self.input_signature)):
            if not spec.is_compatible_with(arg):
                raise ValueError(f"frozen function argument {index}: {arg.dtype.name} {tuple(arg.shape)} does not "
                                 f"match the frozen signature {spec.dtype.name} {tuple(spec.shape)}")
        return self.concrete(*args)

    def op_types(self) -> list[str]:
        """The type of every op of the traced graph (`graph_op_types`)."""
        return graph_op_types(self.concrete)

    def reads_variables(self) -> bool:
        """Whether the graph (its nested functions included) still reads or writes a variable."""
        return any(op in _VARIABLE_OPS for op in self.op_types()) or bool(self.concrete.captured_inputs)


def graph_op_types(function: Any) -> list[str]:
    """The type of every op of a concrete function's graph, its nested functions' (loops,
    conditions) included, before Grappler's optimizations; one entry per op."""
    definition = function.graph.as_graph_def()
    nodes = list(definition.node) + [n for f in definition.library.function for n in f.node_def]
    return [node.op for node in nodes]


def freeze(function: Callable[..., Any], input_signature: Sequence[tf.TensorSpec],
           variables: Sequence[keras.Variable],
           overrides: Sequence[tuple[keras.Variable, np.ndarray]] = ()) -> FrozenFunction:
    """Traces `function` once with every read of `variables` replaced by its current value.

    Args:
        function: a Python function of tensors (e.g. a bound method that calls a Keras model).
        input_signature: one `tf.TensorSpec` per positional argument; dimensions given as None
            (e.g. the batch) stay free in the frozen graph.
        variables: every Keras variable `function` reads (e.g. ``model.variables``). One left
            out is read as a variable (`FrozenFunction.reads_variables` tells).
    Returns:
        A callable taking tensors that match `input_signature` and returning what `function`
        returns (the same nested structure).
    """
    replaced = {id(variable): (variable, np.asarray(value)) for variable, value in overrides}
    known = {id(variable) for variable in variables}
    for variable, value in replaced.values():
        if id(variable) not in known:
            raise ValueError(f"override for {variable.path}, which is not one of the variables to freeze")
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"override for {variable.path} has shape {tuple(value.shape)}, the variable "
                             f"{tuple(variable.shape)}")
    # A snapshot: later assigns don't leak in.
    values = [(variable, replaced[id(variable)][1].astype(variable.dtype) if id(variable) in replaced
               else variable.numpy()) for variable in variables]

    def constant_weights(*args: tf.Tensor) -> Any:
        with keras.StatelessScope(state_mapping=[(variable, tf.constant(value)) for variable, value in values]):
            return function(*args)

    concrete = tf.function(constant_weights).get_concrete_function(*input_signature)
    values.clear()  # the graph holds its own copy; the traced closure would keep this one alive
    return FrozenFunction(concrete, input_signature)


def batchnorm_fold(conv: keras.layers.Layer,
                   batchnorm: keras.layers.Layer) -> list[tuple[keras.Variable, np.ndarray]]:
    """Weight values that fold an inference-mode BatchNorm into the convolution feeding it.

    With its moving statistics a BatchNorm is the per-channel affine map
    y = x * s + (beta - mean * s), s = gamma / sqrt(variance + epsilon). After a convolution,
    y = conv(x, W) * s + (b - mean) * s + beta = conv(x, W * s) + b', so the convolution takes
    the kernel W * s (s along the output-channel axis) and the bias b' = (b - mean) * s + beta,
    and the BatchNorm gets gamma 1, beta 0, mean 0, variance 1 - epsilon: the identity, which
    `mrcnn.modeling.backbone.BatchNorm` recognizes among a frozen graph's constants and skips.
    Computed in float64, stored in the variables' dtype.

    Only valid where the BatchNorm reads nothing but the convolution's output and nothing else
    reads that output (the owners' `conv_batchnorm_pairs` declare such pairs), and only for
    inference, where the statistics are not updated.

    Args:
        conv: a built channels-last `keras.layers.Conv2D` (kernel [kh, kw, C_in / groups, C_out]).
        batchnorm: a built `keras.layers.BatchNormalization` over its C_out channels (last axis).
    Returns:
        [(variable, value)] for the conv's kernel and bias and the BatchNorm's four variables;
        [] when the pair cannot be folded: a convolution without a bias (no variable to carry
        the shift), other layer types or layouts, a BatchNorm without gamma or beta or with
        renormalization.
    """
    if not (isinstance(conv, keras.layers.Conv2D) and isinstance(batchnorm, keras.layers.BatchNormalization)):
        return []
    last_axis = batchnorm.axis == -1 or (batchnorm.input_spec is not None
                                         and batchnorm.axis == batchnorm.input_spec.ndim - 1)
    if not (conv.use_bias and conv.data_format == "channels_last" and batchnorm.center and batchnorm.scale
            and not batchnorm.renorm and last_axis and tuple(batchnorm.moving_mean.shape) == (conv.filters,)):
        return []
    gamma, beta, mean, variance = (np.asarray(v.numpy(), np.float64) for v in
                                   (batchnorm.gamma, batchnorm.beta, batchnorm.moving_mean, batchnorm.moving_variance))
    scale = gamma / np.sqrt(variance + batchnorm.epsilon)
    kernel = np.asarray(conv.kernel.numpy(), np.float64) * scale  # broadcasts over the last (output) axis
    bias = (np.asarray(conv.bias.numpy(), np.float64) - mean) * scale + beta
    epsilon = np.float32(batchnorm.epsilon)
    ones, zeros = np.ones_like(gamma), np.zeros_like(gamma)
    return [(conv.kernel, kernel), (conv.bias, bias), (batchnorm.gamma, ones), (batchnorm.beta, zeros),
            (batchnorm.moving_mean, zeros), (batchnorm.moving_variance, ones * (np.float32(1) - epsilon))]
