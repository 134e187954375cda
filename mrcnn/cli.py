"""Exit statuses and error messages for the command-line scripts (``samples/*/*.py``).

A missing dataset folder or a mistyped ``--set`` field is the user's input, not a bug: the scripts
print one ``prog: error: ...`` line (argparse's form) and exit with 2 instead of a traceback; a
training run stopped by a NaN loss exits with 1 and one line saying which checkpoint is kept.
"""

from __future__ import annotations

import ast
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any

# What the library raises for bad input: a missing file, dataset or weights (WeightsNotAvailableError
# is a FileNotFoundError), an output that is already there (an export folder), a path that is a
# file where a folder belongs or the reverse (--logs), one the user may not write, and a bad value
# (Config fields, dataset contents, arguments).
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 1  # training stopped on a NaN/infinite loss
EXIT_INTERRUPTED = 130  # the shell's status for SIGINT


def run_command(command: Callable[[], object], prog: str, show_traceback: bool = False,
                interrupted_hint: str | None = None) -> int:
    """Runs one command of a script and returns the process exit status.

    Args:
        command: the work, with its arguments bound.
        prog: the script's name, first on the error line.
        show_traceback: also print the traceback of a user error (e.g. ``--verbose 2``); errors of
            any other type always propagate with theirs.
        interrupted_hint: printed on Ctrl-C, e.g. how to resume (the checkpoint is already written
            by ``MaskRCNN.train``).

    Returns:
        0 on success, 2 after a user error, 1 after training diverged (`TrainingDivergedError`;
        messages on stderr), 130 after Ctrl-C.
    """
    from mrcnn.callbacks import TrainingDivergedError

    try:
        command()
    except (*USER_ERRORS, TrainingDivergedError) as error:
        if show_traceback:
            traceback.print_exc()
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_DIVERGED if isinstance(error, TrainingDivergedError) else EXIT_USER_ERROR
    except KeyboardInterrupt:
        if interrupted_hint:
            print(interrupted_hint, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def parse_canvas(text: str | None) -> tuple[int, int] | None:
    """``--canvas`` "H,W" (or "HxW") -> (H, W); None for None.

    Raises:
        ValueError: naming the text when it is not two positive integers.
    """
    if text is None:
        return None
    parts = text.lower().replace("x", ",").split(",")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        raise ValueError(f"--canvas must be H,W (two positive integers), got {text!r}") from None
    if min(height, width) < 1:
        raise ValueError(f"--canvas must be H,W (two positive integers), got {text!r}")
    return height, width


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``--set`` items -> Config fields: ``["image_max_dim=128", "BACKBONE=resnet50"]`` ->
    ``{"IMAGE_MAX_DIM": 128, "BACKBONE": "resnet50"}``.

    Field names are upper-cased. A value is a Python literal when it parses as one (numbers, tuples,
    lists, None, True), else JSON (null, true, false), else the string itself (``resnet50``);
    `Config.update` then checks names and types.

    Raises:
        ValueError: naming an item without ``=``.
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set takes FIELD=VALUE items, got {item!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        overrides[name.strip().upper()] = value
    return overrides
