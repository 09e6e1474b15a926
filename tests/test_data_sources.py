"""Real-format training data: path patterns, tar shards, CSV/TSV files, image decoding, and the
grain pipeline's skip counting and exact resumption, all on small real files written here."""

import io
import os
import tarfile

import grain
import numpy as np
import pytest
from PIL import Image

from rankclip_jax.data import images, pipeline
from rankclip_jax.data.csv_files import CsvFormatError, CsvSource
from rankclip_jax.data.files import DataPathError, expand_braces, expand_paths
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.data.webdataset import ShardError, WebDatasetSource, scan_tar
from rankclip_jax.data import records

import data_fixtures as F
from tests.cli_runs import xla_flags


# ---------------------------------------------------------------------------------------- paths

def test_brace_expansion():
  assert expand_braces("a/{008..011}.tar") == [f"a/{i:03d}.tar" for i in range(8, 12)]
  assert expand_braces("{8..11}") == ["8", "9", "10", "11"]
  assert expand_braces("x{a,b}y{1..2}") == ["xay1", "xay2", "xby1", "xby2"]
  assert expand_braces("{a,b{1..2}}") == ["a", "b1", "b2"]
  assert expand_braces("plain.tar") == ["plain.tar"]
  with pytest.raises(ValueError, match="Unbalanced"):
    expand_braces("a{1..2")


def test_expand_paths_files_globs_dirs_lists_and_errors(tmp_path):
  for name in ("00000.tar", "00001.tar", "00002.tar", "notes.txt"):
    (tmp_path / name).write_bytes(b"x")
  d = str(tmp_path)
  tars = [os.path.join(d, f"0000{i}.tar") for i in range(3)]
  assert expand_paths(f"{d}/{{00000..00002}}.tar", suffixes=(".tar",)) == tars
  assert expand_paths(f"{d}/*.tar", suffixes=(".tar",)) == tars
  assert expand_paths(d, suffixes=(".tar",)) == tars  # a directory: its .tar files
  assert expand_paths([tars[2], tars[0]], suffixes=(".tar",)) == [tars[2], tars[0]]
  assert expand_paths(f"{tars[1]},{d}/0000{{0,1}}.tar", suffixes=(".tar",)) == [tars[1], tars[0]]
  with pytest.raises(DataPathError, match=r"config.data.train.path=.*matches no file"):
    expand_paths(f"{d}/*.csv", suffixes=(".csv",), field="config.data.train.path")
  with pytest.raises(DataPathError, match="00003.tar does not exist"):
    expand_paths(f"{d}/{{00000..00003}}.tar", suffixes=(".tar",))
  with pytest.raises(DataPathError, match="is empty"):
    expand_paths("", suffixes=(".tar",))


# ------------------------------------------------------------------------------------ tar files

def test_scan_tar_reads_names_and_offsets_in_every_header_format(tmp_path):
  long_dir = "d" * 120 + "/"
  members = {"short.txt": b"abc", long_dir + "000001.jpg": b"\x01" * 700,
             "caf\u00e9/000002.txt": "caf\u00e9 au lait".encode(), "empty.txt": b""}
  for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
    path = str(tmp_path / f"f{fmt}.tar")
    with tarfile.open(path, "w", format=fmt) as tar:
      tar.addfile(_dir_info("a_directory"))
      for name, data in members.items():
        if fmt == tarfile.USTAR_FORMAT and not name.isascii():
          continue
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    found, problem = scan_tar(path)
    assert problem is None
    raw = open(path, "rb").read()
    got = {name: raw[off:off + size] for name, off, size in found}
    expected = {k: v for k, v in members.items() if fmt != tarfile.USTAR_FORMAT or k.isascii()}
    assert got == expected, fmt


def _dir_info(name):
  info = tarfile.TarInfo(name)
  info.type = tarfile.DIRTYPE
  return info


def test_cut_short_tar_keeps_what_came_before_and_bad_files_are_named(tmp_path):
  F.write_tar_shards(str(tmp_path / "tars"), num_good=12, num_shards=1)
  path = str(tmp_path / "tars/00000.tar")
  data = open(path, "rb").read()
  cut = str(tmp_path / "cut.tar")
  whole, _ = scan_tar(path)
  _, offset, size = whole[len(whole) // 2]
  assert size > 1
  with open(cut, "wb") as f:
    f.write(data[:offset + size // 2])  # cut inside a member's data
  members, problem = scan_tar(cut)
  assert "cut short" in str(problem) and len(members) > 3
  src = WebDatasetSource(cut)
  records = [src[i] for i in range(len(src))]
  assert sum("image_bytes" in r for r in records) >= 2
  # The cut member is one skip marker among what the source returns, at the end of the shard.
  assert [r["__skipped__"] for r in records if "__skipped__" in r].count("broken_member") == 1
  assert records[-1]["__skipped__"] == "broken_member" and "cut short" in records[-1]["where"]
  not_tar = tmp_path / "x.tar"
  not_tar.write_bytes(b"this is not a tar archive" * 40)
  with pytest.raises(ShardError, match=f"{not_tar} is not a tar file"):
    WebDatasetSource(str(not_tar))


def test_webdataset_source_returns_each_example_exactly(tmp_path):
  fx = F.write_tar_shards(str(tmp_path), num_good=20, num_shards=3)
  src = WebDatasetSource(fx["pattern"], field="config.data.train.path")
  assert len(src.shards) == 3 and len(src) == 24
  records = [src[i] for i in range(len(src))]
  # The fixture's key without a caption is the only skip marker the source returns (its other bad
  # examples are complete, readable members, skipped later by the decoder).
  markers = {r["where"].rsplit(":", 1)[1]: r["__skipped__"] for r in records if "__skipped__" in r}
  assert markers == {k: kind for k, kind in fx["bad"].items() if kind == "incomplete_example"}
  assert len(markers) == 1
  seen = {}
  for rec in records:
    key = rec["where"].rsplit(":", 1)[1]
    if "image_bytes" in rec:
      seen[key] = rec["caption"]
  bad_readable = {k for k, kind in fx["bad"].items() if kind != "incomplete_example"}
  assert {k: v for k, v in seen.items() if k not in bad_readable} == fx["good"]
  # The grey and RGBA PNGs are found under their own extension.
  grey = next(src[i] for i in range(len(src)) if src[i].get("where", "").endswith(fx["png_keys"][0]))
  assert grey["image_bytes"].startswith(b"\x89PNG")
  # Pickles (into grain workers) without its open files, and still reads after.
  import pickle
  clone = pickle.loads(pickle.dumps(src))
  assert clone[0] == src[0]


def test_many_shards_are_indexed_in_processes_the_same_as_serially(tmp_path):
  from rankclip_jax.data.webdataset import index_shards
  fx = F.write_tar_shards(str(tmp_path), num_good=16, num_shards=8)
  shards = expand_paths(fx["pattern"], suffixes=(".tar",))
  serial = index_shards(shards, ("jpg", "png"), ("txt",), processes=1)
  pooled = index_shards(shards, ("jpg", "png"), ("txt",), processes=2)
  assert sum(len(p.rows) for p in serial) == 20
  for a, b in zip(serial, pooled):
    np.testing.assert_array_equal(a.rows, b.rows)
    assert a.damage == b.damage is None and a.members == b.members


def test_webdataset_without_matching_members_says_which_extensions(tmp_path):
  fx = F.write_tar_shards(str(tmp_path), num_good=4, num_shards=1)
  with pytest.raises(ShardError, match=r"image \(gif\).*caption \(txt\)"):
    WebDatasetSource(fx["pattern"], image_exts=("gif",), field="config.data.train.path")


# ------------------------------------------------------------------------------------ CSV files

@pytest.mark.parametrize("delimiter,name", [(",", "train.csv"), ("\t", "train.tsv")])
def test_csv_source_reads_rows_relative_to_the_file(tmp_path, delimiter, name):
  fx = F.write_csv(str(tmp_path / "data"), num_good=10, delimiter=delimiter, name=name,
                   image_key="filepath", caption_key="title")
  src = CsvSource(fx["path"], image_key="filepath", caption_key="title")  # delimiter from suffix
  assert len(src) == 14
  got = {}
  for i in range(len(src)):
    rec = src[i]
    rel = os.path.relpath(rec["where"], str(tmp_path / "data"))
    if "image_bytes" in rec:
      with open(rec["where"], "rb") as f:
        assert f.read() == rec["image_bytes"]
      got[rel] = rec["caption"]
    else:
      assert fx["bad"][rel] == "missing_file"
  assert {k: v for k, v in got.items() if k not in fx["bad"]} == fx["good"]


def test_csv_errors_name_the_file_and_the_fix(tmp_path):
  fx = F.write_csv(str(tmp_path), num_good=3)
  with pytest.raises(CsvFormatError, match=r"train.csv has no column 'filepath'.*'image'"):
    CsvSource(fx["path"], image_key="filepath", field="config.data.train.path")
  with pytest.raises(CsvFormatError, match="is the delimiter right"):
    CsvSource(fx["path"], delimiter="tab", field="config.data.train.path")
  with pytest.raises(DataPathError, match="matches no file"):
    CsvSource(str(tmp_path / "nope.csv"))


# --------------------------------------------------------------------------------------- images

def test_decode_grey_rgba_truncated_and_crops():
  image = F.scenes(1, image_size=40)[0][0]
  grey = images.decode_rgb(F.grey_png(image))
  g = np.asarray(grey)
  assert g.shape == (40, 40, 3) and np.array_equal(g[..., 0], g[..., 1])
  expected_grey = np.asarray(Image.fromarray(image).convert("L"))
  assert np.array_equal(g[..., 0], expected_grey)
  rgba = np.asarray(images.decode_rgb(F.rgba_png(image)))
  assert np.all(rgba[:, :20] == 255)  # transparent half over white, not the stored black
  assert np.array_equal(rgba[:, 20:], image[:, 20:])
  for bad in (F.truncated_jpeg(image), F.corrupt_jpeg(), b"", b"GIF89a"):
    with pytest.raises(images.BadImage):
      images.decode_rgb(bad)
  wide = Image.fromarray(np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (100, 1, 3)))
  c = images.center_crop(wide, 50)
  assert c.shape == (50, 50, 3) and abs(int(c[0, 25, 0]) - 100) <= 2  # the middle of the row
  r1 = images.random_resized_crop(wide, 32, np.random.default_rng(0))
  r2 = images.random_resized_crop(wide, 32, np.random.default_rng(0))
  assert r1.shape == (32, 32, 3) and np.array_equal(r1, r2)


# ------------------------------------------------------------------------------------- pipeline

def _make(kind, tmp_path, num_good=24):
  if kind == "webdataset":
    fx = F.write_tar_shards(str(tmp_path / "tars"), num_good=num_good, num_shards=3)
    src = WebDatasetSource(fx["pattern"])
    ident = lambda i: src.index[i]["key"].decode()  # noqa: E731
  else:
    fx = F.write_csv(str(tmp_path / "csv"), num_good=num_good)
    src = CsvSource(fx["path"])
    ident = lambda i: os.path.relpath(src.images[i], str(tmp_path / "csv"))  # noqa: E731
  return src, {i: fx["bad"].get(ident(i)) for i in range(len(src))}


def _expected_skips(kinds_by_index, n, seed, good_wanted, order=None):
  """Walks grain's shuffled epoch order (independently of the pipeline under test) and counts the
  bad examples met before the good_wanted-th good one."""
  if order is None:
    order = grain.MapDataset.range(n).shuffle(seed=seed).repeat(None)
  counts, good = dict.fromkeys(SKIP_KINDS, 0), 0
  for pos in range(10 * n):
    kind = kinds_by_index[order[pos]]
    if kind is None:
      good += 1
      if good == good_wanted:
        return counts
    else:
      counts[kind] += 1
  raise AssertionError("not enough good examples")


@pytest.mark.parametrize("kind", ["webdataset", "csv"])
def test_pipeline_skips_and_counts_every_bad_example(tmp_path, kind):
  src, kinds = _make(kind, tmp_path)
  it = pipeline.train_iterator(src, per_process_batch_size=8, seed=3, tokenizer=ClipTokenizer(16),
                               image_size=32)
  total = np.zeros(len(SKIP_KINDS), np.int64)
  for _ in range(7):  # 56 good examples: more than two epochs of 24
    batch = next(it)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert np.all(batch["text"][:, 0] == ClipTokenizer.sot_id)
    total += batch["skipped"].sum(0)
  assert records.skip_counts(total) == _expected_skips(kinds, len(src), seed=3, good_wanted=56)
  assert total.sum() > 0


def test_resumed_iterator_yields_exactly_the_uninterrupted_batches(tmp_path):
  src, _ = _make("webdataset", tmp_path)
  kw = dict(per_process_batch_size=8, seed=1, tokenizer=ClipTokenizer(16), image_size=32)
  it = pipeline.train_iterator(src, **kw)
  for _ in range(4):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = pipeline.train_iterator(src, **kw)
  resumed.set_state(state)
  for a, b in zip(expected, [next(resumed) for _ in range(5)]):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])  # same examples, same random crops, same counts


def test_two_hosts_split_each_epoch_and_worker_processes_change_nothing(tmp_path):
  src, kinds = _make("csv", tmp_path, num_good=16)
  kw = dict(per_process_batch_size=3, seed=0, tokenizer=ClipTokenizer(77), image_size=32)
  batches = {}
  for p in (0, 1):
    it = pipeline.train_iterator(src, process_index=p, process_count=2, **kw)
    batches[p] = [next(it) for _ in range(2)]
  # Each host reads its own half of the epoch (10 positions, at most 4 of them bad): the two
  # hosts' first 6 examples are 12 different examples.
  texts = [tuple(t) for p in (0, 1) for b in batches[p] for t in b["text"]]
  assert len(set(texts)) == 12
  # Worker processes (spawned, like a real run's data.worker_count): grain gives worker w the
  # examples w, w + W, ... of this host's sequence and takes batches from the workers in turn, so
  # the order differs from a single process; what must hold is that every skipped example is still
  # counted exactly, through the processes, and that the run is deterministic.
  counts = []
  for _ in range(2):
    it = pipeline.train_iterator(src, process_index=1, process_count=2, worker_count=2, **kw)
    got = [next(it) for _ in range(8)]  # 4 batches of 3 from each worker: > 1 epoch each
    counts.append(records.skip_counts(sum(b["skipped"].sum(0) for b in got)))
  order = grain.MapDataset.range(len(src)).shuffle(seed=0).repeat(None)[1::2]
  expected = dict.fromkeys(SKIP_KINDS, 0)
  for w in range(2):
    for k, v in _expected_skips(kinds, len(src), 0, 12, order=order[w::2]).items():
      expected[k] += v
  assert counts[0] == counts[1] == expected


# ------------------------------------------------------------------------------------- training

def _real_data_config(kind, path, **overrides):
  import ml_collections
  from test_train import micro_config
  c = micro_config(total_steps=4, **overrides)
  c.data.train.kind = kind  # switched like --config.data.train.kind=... on the command line
  c.data.train.path = path
  c.checkpoint.every_steps = 2
  c.evals = ml_collections.ConfigDict({"retrieval": c.evals.retrieval})  # keep the test short
  return c


def _final_state(config, workdir):
  from rankclip_jax import checkpointing, train
  trainer = train.Trainer(config)
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=2, keep=2)
  step, state = ck.restore(trainer.abstract_state_with_shardings())
  ck.close()
  return step, state


def _logged_skips(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  return {k: int(tensor_util.make_ndarray(acc.Tensors(f"data/skipped/{k}")[-1].tensor_proto))
          for k in SKIP_KINDS}


def _mixed_tar_corpus(tmp_path):
  """Three good shards plus four damaged ones (data_fixtures.damaged_shards: not a tar, cut at a
  header boundary, a negative size, a pax record of length 0) in one directory: the source, the
  skip kind of each index position, and the damaged shards' paths."""
  fx = F.write_tar_shards(str(tmp_path / "tars"), num_good=24, num_shards=3)
  damaged = F.damaged_shards(str(tmp_path / "tars/00000.tar"), str(tmp_path / "tars"))
  src = WebDatasetSource(str(tmp_path / "tars"), max_unreadable_shard_fraction=0.2)
  assert src.shard_damage == {"not_a_tar": 1, "truncated": 1, "corrupt_header": 2}
  kinds = {}
  for i, row in enumerate(src.index):
    key = row["key"].decode().rsplit("/", 1)[-1]  # the pax copy's keys are under a long folder
    kinds[i] = SKIP_KINDS[row["kind"] - 1] if row["kind"] else fx["bad"].get(key)
  return src, kinds, damaged


def resume_with_main_py(tmp_path, kind, path, overrides, workdir):
  """`python main.py` on `workdir` with _real_data_config(kind, path, **overrides), as a user
  resumes a killed run; the finished process (asserted to have succeeded)."""
  import subprocess
  import sys
  tests = os.path.dirname(os.path.abspath(__file__))
  config_file = tmp_path / "config.py"
  config_file.write_text(
      f"import sys\nsys.path[:0] = [{tests!r}, {os.path.dirname(tests)!r}]\n"
      "from test_data_sources import _real_data_config\n\n\ndef get_config():\n"
      f"  return _real_data_config({kind!r}, {path!r}, **{overrides!r})\n")
  proc = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(tests), "main.py"), f"--config={config_file}",
       f"--workdir={workdir}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc


def test_interrupted_training_on_damaged_tar_shards_resumes_where_it_stopped(tmp_path):
  """A corpus of good and damaged shards, trained in-process, stopped after step 2 (like a kill)
  and resumed to step 4 by `python main.py`: the run trains to the end and names each damaged
  shard once in its log; the damaged shards' remains count as broken_member skips, exactly, in
  the metrics and the checkpoint; and the data position comes back with the checkpoint, so the run
  ends with the parameters of 4 uninterrupted steps (a repeated or skipped stretch of data would
  change them). Batch-level equality is checked above."""
  import jax
  from rankclip_jax import train
  from test_train import _run_steps
  src, kinds, damaged = _mixed_tar_corpus(tmp_path)
  path = str(tmp_path / "tars")
  overrides = {"data.train.max_unreadable_shard_fraction": 0.2}
  config = _real_data_config("webdataset", path, **overrides)
  workdir = str(tmp_path / "run")
  _run_steps(_real_data_config("webdataset", path, **overrides), workdir, stop_after=2)
  assert _final_state(config, workdir)[0] == 2
  proc = resume_with_main_py(tmp_path, "webdataset", path, overrides, workdir)
  for kind, shard in damaged.items():
    assert sum(f"Tar shard {shard}" in line for line in proc.stderr.splitlines()) == 1, kind
  step, state = _final_state(config, workdir)
  assert step == 4
  expected = _expected_skips(kinds, len(src), seed=config.seed, good_wanted=4 * 16)
  assert expected["broken_member"] > 0 and expected["unreadable_image"] > 0
  assert records.skip_counts(state.data_skipped) == expected
  assert _logged_skips(workdir) == expected
  train.train_and_evaluate(config, str(tmp_path / "uninterrupted"))
  _, full = _final_state(config, str(tmp_path / "uninterrupted"))
  for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                         jax.tree.leaves(full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                               err_msg=jax.tree_util.keystr(key))


def test_main_reports_a_bad_data_path_in_one_line_before_any_work(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, os.path.join(repo, "main.py"),
       f"--config={os.path.join(repo, 'configs/rankclip_cc3m.py')}:none",
       f"--workdir={tmp_path / 'run'}", f"--config.data.train.path={tmp_path}/{{00000..00003}}.tar"],
      cwd=tmp_path, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, XLA_FLAGS=xla_flags(1)))
  assert proc.returncode != 0
  assert f"Error: config.data.train.path='{tmp_path}/{{00000..00003}}.tar'" in proc.stderr
  assert "00000.tar does not exist" in proc.stderr and "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


def test_clean_text_fast_path_equals_ftfy_and_html_unescape():
  """Printable ASCII without "&" skips ftfy and HTML unescaping: the same text as the full cleaning
  on random strings of printable ASCII (and the slow path still runs where either could matter)."""
  import html
  import string
  import ftfy
  from rankclip_jax.data.tokenizer import clean_text

  def full(text):
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()

  rng = np.random.default_rng(0)
  alphabet = np.array(list(string.printable.replace("&", "")))
  texts = ["".join(rng.choice(alphabet, rng.integers(0, 60))) for _ in range(3000)]
  texts += ["a photo of a RED circle ", "  two   stars\tand a heart", "'quoted' \"words\" <b>"]
  for text in texts:
    assert clean_text(text) == full(text), repr(text)
  # Where the full path matters, it still runs: entities, curly quotes, mojibake, line breaks.
  assert clean_text("fish &amp;amp; chips") == "fish & chips"
  assert clean_text("\u201cquoted\u201d") == '"quoted"'
  assert clean_text("caf\u00c3\u00a9") == "caf\u00e9"
