"""notebooks/quickstart.ipynb runs top to bottom on a real (micro) trained run, in a Jupyter kernel
started from notebooks/, and shows what it says it shows: each printed value is recomputed here from
the same run with rankclip_jax.load."""

import json
import os
import re
import sys
import tempfile

import jax
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

import rankclip_jax
from rankclip_jax import checkpointing
from rankclip_jax.data import synthetic
from rankclip_jax.models import SIZES

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
  # Two extra cells: the arrays behind the picture and the printed numbers (to check them against a
  # recomputation, beyond the few digits printed), and last, which Python the kernel runs.
  nb.cells.append(nbformat.v4.new_code_cell(
      "import json\nprint('ARRAYS=' + json.dumps(dict(similarity=similarity.tolist(), "
      "probs=probs.tolist(), file_probs=file_probs.tolist())))"))
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


@pytest.fixture(scope="module")
def loaded(micro_run):
  return rankclip_jax.load(micro_run)


def _arrays(nb):
  out = _text([c for c in nb.cells if c.cell_type == "code"][-2])
  return {k: np.asarray(v) for k, v in json.loads(out.split("ARRAYS=", 1)[1]).items()}


def _printed(pattern, out):
  match = re.search(pattern, out, re.M)
  assert match, f"{pattern!r} not in:\n{out}"
  return match.groups()


def test_notebook_loads_the_trained_run(executed, loaded):
  nb, workdir, step = executed
  out = _text(_tagged(nb, "load"))
  m = loaded
  # The micro run of conftest.py (tests/test_train.py's micro_config), counted independently of
  # the notebook's sum over m.params: from the parameter shapes of a fresh init of its model.
  shapes = jax.eval_shape(m.model.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32),
                          np.zeros((1, 16), np.int32))["params"]
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert num_params == sum(int(np.size(x)) for x in jax.tree.leaves(m.params))
  assert out.startswith(f"run: {workdir}\nstep: {step}\nparameters: {num_params:,}\n"
                        f"embedding width: {SIZES['micro'].embed_dim}\n"
                        "image size: 32 px; context length: 16 tokens\n"
                        f"loss: {m.config.loss.name}; logit scale: "), out
  assert m.step == step and m.config.loss.name == "rankclip"
  scale, = _printed(r"^loss: \w+; logit scale: ([\d.]+)$", out)
  assert float(scale) == pytest.approx(m.logit_scale, abs=0.005 + 1e-6)  # printed with .2f


def test_similarity_matrix_is_a_picture_and_top1_is_printed(executed, loaded):
  nb, _, _ = executed
  cell = _tagged(nb, "similarity")
  assert any("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type ==
             "display_data")
  top1, chance = _printed(r"image->text top-1 on these 8 pairs: ([\d.]+) \(chance ([\d.]+)\)",
                          _text(cell))
  # Recomputed: the 8 test scenes and their captions, each image's best caption.
  scenes = synthetic.SyntheticScenes(num_records=8, split="test", image_size=32)
  examples = [scenes[i] for i in range(8)]
  similarity = (loaded.encode_images([ex["image"] for ex in examples]) @
                loaded.encode_texts([ex["caption"] for ex in examples]).T)
  np.testing.assert_allclose(_arrays(nb)["similarity"], similarity, atol=1e-5)  # the picture's
  want = np.mean(similarity.argmax(axis=1) == np.arange(8))  # a multiple of 1/8: exact at .3f
  assert float(top1) == want and chance == "0.125"


def test_zero_shot_accuracy_is_printed(executed, loaded):
  nb, _, _ = executed
  out = _text(_tagged(nb, "zero-shot"))
  accuracy, = _printed(r"zero-shot shape accuracy: ([\d.]+) on 64 test scenes \(chance 0.125\)",
                       out)
  # Recomputed without classify's softmax (which keeps the argmax): nearest class embedding.
  names, templates, key, offset = synthetic.zero_shot_task("shape")
  scenes = synthetic.SyntheticScenes(num_records=64, split="test", max_objects=1, image_size=32)
  examples = [scenes[i] for i in range(64)]
  labels = np.array([ex[key] - offset for ex in examples])
  images = [ex["image"] for ex in examples]
  scores = loaded.encode_images(images) @ loaded.class_embeddings(names, templates).T
  assert accuracy == f"{np.mean(scores.argmax(axis=1) == labels):.3f}"
  arrays = _arrays(nb)
  np.testing.assert_allclose(arrays["probs"], loaded.classify(images, names, templates=templates),
                             atol=1e-5)
  # The file-input cell classified the PNG of the first scene: its top 3, recomputed from a PNG
  # written the same way.
  out = _text(_tagged(nb, "file"))
  assert _printed(r"^\S+scene\.png: 128x128 RGB; true shape: (\w+)$", out) == (names[labels[0]],)
  printed = re.findall(r"^\s+(\w+)\s+([01]\.\d{3})$", out, re.M)
  assert len(printed) == 3
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "scene.png")
    Image.fromarray(images[0]).resize((128, 128), Image.BICUBIC).save(path)
    probs = loaded.classify([Image.open(path)], names, templates=templates)[0]
  np.testing.assert_allclose(arrays["file_probs"], probs, atol=1e-5)
  top3 = np.argsort(probs)[::-1][:3]
  assert [name for name, _ in printed] == [names[k] for k in top3]
  for (_, p), k in zip(printed, top3):
    assert float(p) == pytest.approx(probs[k], abs=0.0005 + 1e-6)  # printed with .3f
