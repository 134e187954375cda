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

The price is memory: the traced graph, the runtime's optimized copy and its kernels, and oneDNN's
reordered filters each hold the weights (README, "Optimizing for inference": ResNet-50-FPN's
176 MB of weights added 1.8-2.4 GB of resident memory per frozen graph).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
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

    def reads_variables(self) -> bool:
        """Whether the graph (its nested functions included) still reads or writes a variable."""
        definition = self.concrete.graph.as_graph_def()
        nodes = list(definition.node) + [n for f in definition.library.function for n in f.node_def]
        return any(node.op in _VARIABLE_OPS for node in nodes) or bool(self.concrete.captured_inputs)


def freeze(function: Callable[..., Any], input_signature: Sequence[tf.TensorSpec],
           variables: Sequence[keras.Variable]) -> FrozenFunction:
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
    values = [(variable, variable.numpy()) for variable in variables]  # a snapshot: later assigns don't leak in

    def constant_weights(*args: tf.Tensor) -> Any:
        with keras.StatelessScope(state_mapping=[(variable, tf.constant(value)) for variable, value in values]):
            return function(*args)

    concrete = tf.function(constant_weights).get_concrete_function(*input_signature)
    values.clear()  # the graph holds its own copy; the traced closure would keep this one alive
    return FrozenFunction(concrete, input_signature)
