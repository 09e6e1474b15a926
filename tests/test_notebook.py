"""notebooks/quickstart.ipynb runs top to bottom on a real (micro) trained run, in a Jupyter kernel
started from notebooks/, and shows what it says it shows."""

import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from rankclip_jax import checkpointing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NOTEBOOK = os.path.join(NOTEBOOKS, "quickstart.ipynb")


@pytest.fixture(scope="module")
def executed(micro_run):
  workdir = micro_run  # conftest.py: a real trained micro run, shared with other tests
  ckpt = checkpointing.Checkpointer(workdir + "/checkpoints", every_steps=1, keep=10)
  step = ckpt.latest_step()
  ckpt.close()

  nb = nbformat.read(NOTEBOOK, as_version=4)
  # One extra cell, last, reports which Python the kernel runs.
  nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('KERNEL_PYTHON=' + sys.executable)"))
  # The kernel gets this process's environment (conftest's XLA flags and compilation cache), the
  # run to open, and no PYTHONPATH: it must find rankclip_jax the way the notebook does.
  env = dict(os.environ, RANKCLIP_RUN=workdir, JAX_PLATFORMS="cpu")
  env.pop("PYTHONPATH", None)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": NOTEBOOKS}})
  client.execute(env=env)
  return nb, workdir, step


def _text(cell):
  return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream"
                 and o.name == "stdout")


def _tagged(nb, tag):
  cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"one cell tagged {tag!r} expected"
  return cells[0]


def test_committed_notebook_is_clean_nbformat4():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.execution_count is None and cell.outputs == [], "strip the notebook's outputs"


def test_notebook_runs_without_errors_in_the_venv_kernel(executed):
  nb, _, _ = executed
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count is not None for c in code)
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  assert _text(code[-1]).strip() == "KERNEL_PYTHON=" + sys.executable


def test_notebook_loads_the_trained_run(executed):
  nb, workdir, step = executed
  out = _text(_tagged(nb, "load"))
  assert re.search(r"^step: (\d+)$", out, re.M).group(1) == str(step)
  assert f"run: {workdir}\n" in out
  assert int(re.search(r"^parameters: ([\d,]+)$", out, re.M).group(1).replace(",", "")) > 0


def test_similarity_matrix_is_a_picture_and_top1_is_printed(executed):
  nb, _, _ = executed
  cell = _tagged(nb, "similarity")
  assert any("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type ==
             "display_data")
  top1 = float(re.search(r"image->text top-1 on these 8 pairs: ([\d.]+)", _text(cell)).group(1))
  assert 0.0 <= top1 <= 1.0


def test_zero_shot_accuracy_is_printed(executed):
  nb, _, _ = executed
  out = _text(_tagged(nb, "zero-shot"))
  match = re.search(r"zero-shot shape accuracy: ([\d.]+) on 64 test scenes", out)
  assert match, out
  assert 0.0 <= float(match.group(1)) <= 1.0
  # The file-input cell classified the PNG into the same classes.
  out = _text(_tagged(nb, "file"))
  assert "128x128 RGB" in out and len(re.findall(r"^\s+\w+\s+[01]\.\d{3}$", out, re.M)) == 3
