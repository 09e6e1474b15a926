"""The documents' commands and links work: every command in README.md and docs/*.md that runs the
project parses with its entry point's own parser (flags, config files, config fields, sweep files),
without running it, and every relative link and picture resolves (tests/docs_commands.py says how).
Each document's test lists all of its problems at once, as `doc:line: problem`."""

import os

import pytest
from PIL import Image

from tests import docs_commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("doc", docs_commands.documents(REPO))
def test_the_commands_and_links_of_a_document_work(doc):
  report = docs_commands.check_document(os.path.join(REPO, doc), REPO)
  assert not report.problems, (f"{len(report.problems)} problems in {doc}:\n"
                               + "\n".join(map(str, report.problems)))
  if doc == "README.md":  # it shows how to run the project: none found, the check went blind
    assert report.commands > 0 and report.links > 0, report


# A made-up document: each line marked BAD must be reported (at that line), no other line may be.
MADE_UP = """\
# A made-up guide

## Set up `rankclip_jax` (and run it)

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -q -r requirements.txt -e .
pip install -r requirements-nowhere.txt                                    # BAD requirements
python main.py --config=configs/rankclip_synthetic.py --workdir=runs/demo   # fine
python main.py --config=configs/rankclip_synthetic.py --workdir=runs/demo \\
  --config.loss.cross_wieght=0.1                                           # BAD field (line above)
python main.py --config=configs/no_such_config.py --workdir=runs/x         # BAD config file
python main.py --config=configs/rankclip_synthetic.py --workdir=runs/x --config.seed=one  # BAD type
python main.py --config=configs/rankclip_synthetic.py --workdir=runs/x --config.batch_size=0  # BAD
python main.py --config=configs/rankclip_synthetic.py --wrkdir=runs/x      # BAD flag
python main.py --config=configs/rankclip_synthetic.py                      # BAD: no --workdir
python main.py --config=configs/rankclip_synthetic.py ...                  # fine: more flags
python main.py --config=<your config> --workdir=/path/to/run --config.seed=$SEED  # fine
python main.py --config=configs/rankclip_synthetic.py --workdir=$WORKDIR --config.sed=<N>  # BAD
python -m rankclip_jax.sweep --config=configs/bench_synthetic.py \\
  --sweep=configs/sweeps/no_such_sweep.py --workdir=runs/s                 # BAD sweep file
python -m rankclip_jax.sweep --config=configs/bench_synthetic.py \\
  --sweep=configs/sweeps/paper_comparison.py:1 --workdir=runs/s            # fine
python -m rankclip_jax.sweep --report runs/bench_comparison 2>&1 | tee report.log  # fine
python -m rankclip_jax.evaluate --workdir=runs/demo --evals=configs/pcclip_synthetic.py  # fine
python -m rankclip_jax.convert --input=a.safetensors --output=runs/b --act=gleu  # BAD act
python -m rankclip_jax.nowhere --workdir=runs/demo                         # BAD module
rankclip-train --config=configs/rankclip_synthetic.py --workdir=runs/demo  # fine
rankclip-trian --config=configs/rankclip_synthetic.py --workdir=runs/demo  # BAD script
launch/local.sh configs/rankclip_synthetic.py runs/demo --config.seed=1   # fine
launch/local.sh configs/nowhere.py runs/demo                               # BAD launch config
python -m benchmarks.loss_bench --sizes 256 512 --chunk 128                # fine
python -m benchmarks.loss_bench --sizes 256 --chunks 128                   # BAD option
python -m benchmarks.train_bench --sizes tiny [--scan] [--remat POLICY]    # fine
python -m benchmarks.step_profile --config configs/nowhere.py              # BAD config file
python -m benchmarks.no_such_bench                                         # BAD module
```

Inline, `python main.py --config=configs/rankclip_synthetic.py --config.model.sise=tiny` is BAD,
`python main.py --config=configs/rankclip_synthetic.py` is fine (a fragment need not be whole), and
a span over two lines, `python -m benchmarks.loss_bench --sizes 256
--no_raks`, is BAD at its first line.

```
step 10/10 | loss 3.2 | python main.py is not a command at the start of an output line
```

[The method](method.md#baselines), [its second heading of that name](method.md#baselines-1),
[an HTML anchor](method.md#ties), [this page](#set-up-rankclip_jax-and-run-it), [a folder](pictures)
and ![a picture](pictures/loss.png) resolve. [A page](nowhere.md) and [a heading](method.md#no-such)
are BAD, so are ![a picture](pictures/missing.png) and [an anchor here](#no-such-section), and
the [reference] defined below is BAD. [A site](https://example.com) and `[code](not/a/link.md)`
are not checked.

[reference]: missing/reference.md
"""

METHOD = """\
# Method

## Baselines

<a id="ties"></a>**Ties.** ...

## Baselines
"""


def test_the_check_reports_each_mistake_at_its_line_and_nothing_else(tmp_path):
  doc = tmp_path / "docs" / "guide.md"
  (tmp_path / "docs" / "pictures").mkdir(parents=True)
  doc.write_text(MADE_UP)
  (tmp_path / "docs" / "method.md").write_text(METHOD)
  Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "docs" / "pictures" / "loss.png")
  report = docs_commands.check_document(str(doc), REPO)
  lines = MADE_UP.splitlines()
  found = {}
  for p in report.problems:
    assert p.doc == str(doc)
    found.setdefault(p.line, []).append(p.message)
  text = "\n".join(map(str, report.problems))

  def line_of(fragment: str) -> int:
    return next(i for i, line in enumerate(lines, 1) if fragment in line)

  expected = [
      (line_of("requirements-nowhere.txt"), "requirements-nowhere.txt: no such file"),
      (line_of("cross_wieght") - 1, "cross_wieght"),
      (line_of("no_such_config.py"), "no such file"),
      (line_of("--config.seed=one"), "config.seed takes an int"),
      (line_of("--config.batch_size=0"), "config.batch_size=0 must be > 0"),
      (line_of("--wrkdir"), "unknown flag --wrkdir"),
      (line_of("# BAD: no --workdir"), "--workdir is required"),
      (line_of("--config.sed=<N>"), "has no field 'sed'"),
      (line_of("no_such_sweep.py") - 1, "no_such_sweep.py: no such file"),
      (line_of("--act=gleu"), "--act=gleu"),
      (line_of("rankclip_jax.nowhere"), "no module rankclip_jax.nowhere"),
      (line_of("rankclip-trian"), "no such console script"),
      (line_of("configs/nowhere.py runs/demo"), "no such file"),
      (line_of("--chunks 128"), "--chunks: benchmarks.loss_bench has no such option"),
      (line_of("--config configs/nowhere.py"), "configs/nowhere.py: no such file"),
      (line_of("no_such_bench"), "no module benchmarks.no_such_bench"),
      (line_of("model.sise=tiny"), "'sise'"),
      (line_of("a span over two lines"), "--no_raks"),
      (line_of("[A page](nowhere.md)"), "link 'nowhere.md': no such file or folder"),
      (line_of("[A page](nowhere.md)"), "method.md has no heading or anchor 'no-such'"),
      (line_of("pictures/missing.png"), "link 'pictures/missing.png': no such file or folder"),
      (line_of("pictures/missing.png"), "no heading or anchor 'no-such-section' in this document"),
      (len(lines), "link 'missing/reference.md': no such file or folder"),
  ]
  for line, fragment in expected:
    assert sum(fragment in m for m in found.get(line, [])) == 1, (
        f"line {line} ({lines[line - 1].strip()!r}): no problem saying {fragment!r}; "
        f"found:\n{text}")
  assert len(report.problems) == len(expected), f"unexpected problems:\n{text}"
  assert report.commands == 28 and report.links == 12, report


def test_github_anchors():
  """GitHub's rule for a heading's anchor (github-slugger's): lower case, punctuation dropped,
  each space a '-', code and links as their text."""
  assert docs_commands.github_slug("Many devices and many hosts") == "many-devices-and-many-hosts"
  assert docs_commands.github_slug("Set up `rankclip_jax` (and run it)") == \
      "set-up-rankclip_jax-and-run-it"
  assert docs_commands.github_slug("Why these defaults?") == "why-these-defaults"
  assert docs_commands.github_slug("CPU step: ours vs [open_clip](https://x.org)") == \
      "cpu-step-ours-vs-open_clip"
  assert docs_commands.github_slug("A -- B & C") == "a----b--c"
