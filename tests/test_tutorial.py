"""docs/tutorial.ipynb: stored without outputs, and it runs top to bottom and teaches what it says.

The notebook is executed once per module in a fresh kernel started with this very interpreter
(whatever python3 kernelspec another Jupyter installation may register), from a temporary
folder, so nothing is written into the repository. It takes about 10 s on 2 cores.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
jupyter_client = pytest.importorskip("jupyter_client")

from jupyter_client.kernelspec import KernelSpec  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"

#: Pictures the notebook draws: sample digits, random conv maps, random pooled maps, learning curves,
#: confusion matrix, misclassified digits, trained conv maps, trained pooled maps, softmax bar charts.
EXPECTED_IMAGES = 9
#: The notebook's recipe reaches 92.3% (SGD with momentum, 10 epochs, seed 0); the network's ceiling
#: on this sample is about 92%, so 90% leaves room for rounding differences between BLAS builds.
MIN_TEST_ACCURACY = 90.0
PNG = b"\x89PNG\r\n\x1a\n"


class ThisInterpreterKernel(AsyncKernelManager):
    """An ipykernel running on ``sys.executable``, the interpreter (and virtualenv) of this test run."""

    @property
    def kernel_spec(self):
        return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                          display_name="Python 3 (this interpreter)", language="python")


def _read():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    return nb


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_stored_without_outputs():
    nb = _read()
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} is stored with outputs: clear them before committing"
        assert cell.execution_count is None, f"code cell {i} is stored with an execution count"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = _read()
    # One extra cell, in memory only: which interpreter the kernel runs on.
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL', sys.executable)"))
    workdir = tmp_path_factory.mktemp("tutorial")
    env = dict(os.environ)
    # This checkout's cnnxp, even where the package is not installed, from a folder outside the repository.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("MPLBACKEND", None)  # the notebook chooses the inline backend itself
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", kernel_manager_class=ThisInterpreterKernel,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return nb, workdir


def test_runs_without_errors_or_warnings(executed):
    nb, _ = executed
    errors = [(i, o.ename, o.evalue) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "error"]
    assert not errors, f"cells raised: {errors}"
    stderr = [(i, o.text) for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for o in c.outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"cells wrote to stderr (a learner sees this as a red block): {stderr}"


def test_kernel_is_this_interpreter(executed):
    nb, _ = executed
    line = _stdout(nb.cells[-1]).strip()
    assert line == f"KERNEL {sys.executable}"


def test_reaches_its_test_accuracy(executed):
    nb, _ = executed
    text = _stdout(_tagged(nb, "test-accuracy"))
    match = re.search(r"test accuracy: ([0-9.]+)% \((\d+) of 1,000", text)
    assert match, f"no test accuracy line in:\n{text}"
    accuracy, right = float(match.group(1)), int(match.group(2))
    assert accuracy >= MIN_TEST_ACCURACY, text
    assert abs(accuracy - right / 10) < 1e-9, "the printed accuracy and count disagree"


def test_training_shows_a_progress_bar_and_a_line_per_epoch(executed):
    """In a notebook (no terminal), fit still draws its bar, as text in the cell without ipywidgets."""
    nb, _ = executed
    cell = next(c for c in nb.cells if c.cell_type == "code" and "history = fit(" in c.source)
    text = _stdout(cell)
    assert re.search(r"epoch 1/10: +\d+%\|.*\| \d+/125 ", text), text[:500]
    assert len(re.findall(r"epoch \d+/10  train loss ", text)) == 10, text


def test_forward_is_the_layers_in_order(executed):
    nb, _ = executed
    text = _stdout(_tagged(nb, "forward-check"))
    assert "model(x) equals the layers applied in order: True" in text, text
    assert "the same probabilities as above: True" in text, text


def test_draws_its_pictures(executed):
    nb, _ = executed
    images = [base64.b64decode(o.data["image/png"]) for c in nb.cells if c.cell_type == "code"
              for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == EXPECTED_IMAGES
    for data in images:
        assert data.startswith(PNG) and len(data) > 5000  # a real picture, not an empty axis


def test_writes_nothing_into_the_repository(executed):
    _, workdir = executed
    assert not any(workdir.iterdir()), f"the notebook left files in its working folder: {list(workdir.iterdir())}"
