"""Runs every notebook in notebooks/ top to bottom in the QUICK setting; any cell error fails.

The kernel is this interpreter (the .venv's), registered under a private kernel name in a
temporary Jupyter path, so a system-wide "python3" kernel cannot shadow it. Weights go to a
temporary MRCNN_NOTEBOOK_RUNS, so demo.ipynb also exercises its "train briefly" fallback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the `test` extra (nbformat, nbclient)")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "mrcnn-test-python"
# train_shapes first: the inspect notebooks are quicker, and nothing depends on the order.
NAMES = ["train_shapes", "inspect_data", "inspect_model", "inspect_weights", "demo"]


def test_every_notebook_is_listed() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory) -> Path:
    """A Jupyter path holding a kernel spec for sys.executable."""
    jupyter = tmp_path_factory.mktemp("jupyter")
    spec = jupyter / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mrcnn tests", "language": "python"}))
    return jupyter


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_quick(name: str, kernel_env: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
    monkeypatch.setenv("MRCNN_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MRCNN_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError naming the cell and the traceback
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # The first cell reports the setting it ran with.
    assert "QUICK = True" in "".join(o.get("text", "") for o in notebook.cells[1].outputs)
    # Every notebook draws something.
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} produced no figure"
