"""The streaming tar-shard reader (rankclip_jax/data/tar_stream.py, kind webdataset_stream) on
real tar shards the tests write: coverage per epoch and per process, a new order each epoch, fewer
shards than processes, worker processes, weighted mixing, damaged shards, exact resume (iterator
and main.py), a resume on another process count, the size of the saved position."""

import collections
import json
import logging
import os
import tarfile

import numpy as np
import pytest

import data_fixtures as F
from rankclip_jax.data import records, tar_stream
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.data.tokenizer import ClipTokenizer

EXTS = dict(image_exts=("jpg", "png"), caption_exts=("txt",))


def _source(path, **kw):
  return tar_stream.StreamSource(path, **{**EXTS, "cycle_length": 2, "shuffle_window": 8, **kw})


def _take(ds, n):
  it = iter(ds)
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def _keys_of_shards(paths):
  """{(shard index, ordinal): key} of every example (key) of each shard, by tarfile."""
  out = {}
  for s, path in enumerate(paths):
    with tarfile.open(path) as tar:
      keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers()))
    out.update({(s, j): k for j, k in enumerate(keys)})
  return out


def _by_epoch(recs):
  got = collections.defaultdict(list)
  for r in recs:
    source, shard, ordinal, epoch = r["_id"]
    got[epoch].append((shard, ordinal))
  return got


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("stream")
  fx = F.write_tar_shards(str(d / "a"), num_good=36, num_shards=6)
  return fx


def test_each_example_once_per_epoch_disjoint_hosts_and_a_new_order_each_epoch(corpus):
  src = _source(corpus["pattern"])
  shards = src.corpora[0].shards
  every = set(_keys_of_shards(shards))
  assert len(every) == 40  # 36 good + the 4 bad examples of data_fixtures.TAR_BAD
  per_host = {}
  for p in (0, 1):  # 3 shards a host, ~20 examples an epoch: 70 records reach into epoch 3
    per_host[p] = _by_epoch(_take(tar_stream.record_stream(src, seed=3, process_index=p,
                                                           process_count=2), 70))
  for epoch in (0, 1):
    a, b = per_host[0][epoch], per_host[1][epoch]
    assert len(a) == len(set(a)) and len(b) == len(set(b))  # once per epoch
    assert set(a) | set(b) == every and not set(a) & set(b)  # hosts read disjoint shares
    assert {s for s, _ in a}.isdisjoint({s for s, _ in b})  # ... of whole shards
  # A new shard order each epoch, a function of (seed, epoch): the same again with the same seed.
  orders = [tar_stream._epoch_order(3, 0, e, len(shards)).tolist() for e in range(4)]
  assert len({tuple(o) for o in orders}) > 1
  again = _by_epoch(_take(tar_stream.record_stream(src, seed=3, process_index=0,
                                                   process_count=2), 70))
  assert again[0] == per_host[0][0] and again[1] == per_host[0][1]


def test_worker_processes_read_disjoint_shards(corpus):
  """grain gives worker w of W the slice w::W of the pipeline's tasks (set_slice, as mp_prefetch
  does): the workers of a process read disjoint shards, together all of the process's."""
  src = _source(corpus["pattern"])
  shards = []
  for w in range(2):
    ds = tar_stream.record_stream(src, seed=0)
    ds._parent.set_slice(slice(w, None, 2))  # the window shuffle's parent: the interleave
    shards.append({s for s, _ in _by_epoch(_take(ds, 30))[0]})
  assert shards[0].isdisjoint(shards[1]) and shards[0] | shards[1] == set(range(6))


def test_fewer_shards_than_processes_split_the_examples_and_nobody_waits(tmp_path, caplog):
  fx = F.write_tar_shards(str(tmp_path / "two"), num_good=20, num_shards=2)
  src = _source(fx["pattern"])
  every = set(_keys_of_shards(src.corpora[0].shards))
  seen = []
  for p in range(5):  # 2 shards, 5 processes: shard s is read by processes s, s + 2, ...
    recs = _by_epoch(_take(tar_stream.record_stream(src, seed=0, process_index=p,
                                                    process_count=5), 40))
    assert recs[0], p  # every process has data
    seen += recs[0]
  assert sorted(seen) == sorted(every)  # each example once in the epoch, none twice
  with caplog.at_level(logging.WARNING):
    it = tar_stream.stream_iterator(src, per_process_batch_size=2, seed=0,
                                    tokenizer=ClipTokenizer(16), image_size=16, process_index=4,
                                    process_count=5, prefetch=0)
    next(it)
    it.close()
  assert "2 shard(s) for 5 processes" in caplog.text


def test_weighted_sources_keep_their_shares(tmp_path):
  a = F.write_tar_shards(str(tmp_path / "cc12m"), num_good=12, num_shards=2)
  b = F.write_tar_shards(str(tmp_path / "laion"), num_good=12, num_shards=3, seed=1)
  src = _source(f"{a['pattern']}::{b['pattern']}", weights="1::3")
  assert [c.name for c in src.corpora] == ["cc12m", "laion"]
  recs = _take(tar_stream.record_stream(src, seed=0), 800)  # 100 whole windows
  share = np.mean([r["source"] == 1 for r in recs])
  assert abs(share - 0.75) < 0.01
  epochs = {s: max(r["_id"][3] for r in recs if r["source"] == s) for s in (0, 1)}
  assert epochs[1] > 2 * epochs[0]  # each source repeats on its own epochs
  it = tar_stream.stream_iterator(src, per_process_batch_size=8, seed=0,
                                  tokenizer=ClipTokenizer(16), image_size=16, prefetch=0)
  for _ in range(30):
    next(it)
  shares = it.take_shares()
  it.close()
  assert set(shares) == {"cc12m", "laion"} and abs(shares["laion"] - 0.75) < 0.02


@pytest.mark.parametrize("weights,names,error", [
    ("1", "", r"gives 1 weight\(s\) for 2 source\(s\)"), ("1::0", "", "positive"),
    ("1::x", "", "must be a number"), ("", "a::a", "its own name"), ("", "a b::c", "letters")])
def test_source_fields_are_checked_before_anything_is_read(weights, names, error):
  with pytest.raises(tar_stream.StreamConfigError, match=error):
    tar_stream.parse_sources("/nowhere/a/*.tar::/nowhere/b/*.tar", weights, names)


def test_damaged_shards_are_used_to_the_damage_counted_each_epoch_and_named_once(tmp_path,
                                                                                caplog):
  fx = F.write_tar_shards(str(tmp_path / "tars"), num_good=24, num_shards=3)
  damaged = F.damaged_shards(str(tmp_path / "tars/00000.tar"), str(tmp_path / "tars"))
  src = _source(str(tmp_path / "tars"))
  with caplog.at_level(logging.WARNING):
    recs = _take(tar_stream.record_stream(src, seed=0), 300)
  per_epoch = collections.defaultdict(collections.Counter)
  good = collections.defaultdict(set)
  for r in recs:
    kind = records.skip_kind(r)
    if kind and kind.startswith("shard_"):
      per_epoch[r["_id"][3]][kind] += 1
    elif not kind:
      good[r["_id"][3]].add(r["where"].rsplit("/", 1)[-1])
  want = {"shard_not_a_tar": 1, "shard_truncated": 1, "shard_corrupt_header": 2}
  assert per_epoch[0] == want and per_epoch[1] == want
  # The good examples of an epoch: the good shards' and those before each damage (tarfile reads
  # the damaged copies' members up to the damage too; the pax copy keeps its long folder name).
  assert good[0] == good[1] and set(fx["good"]) <= {w.split(":")[-1] for w in good[0]}
  for shard in damaged.values():
    assert sum(f"Tar shard {shard}" in m for m in caplog.messages) == 1


def _iterator(src, **kw):
  return tar_stream.stream_iterator(src, per_process_batch_size=4, seed=1,
                                    tokenizer=ClipTokenizer(16), image_size=16, **kw)


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_yields_exactly_the_uninterrupted_batches(corpus, workers):
  src = _source(corpus["pattern"])
  it = _iterator(src, worker_count=workers)
  for _ in range(5):  # mid-window, mid-shard, past the first epoch of a worker
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # as the checkpoint writes it
  expected = [next(it) for _ in range(12)]
  it.close()
  resumed = _iterator(src, worker_count=workers)
  resumed.set_state(state)
  got = [next(resumed) for _ in range(12)]
  resumed.close()
  _assert_same_batches(expected, got)  # same examples, same crops, same skip counts


def test_saved_position_is_small_and_does_not_grow_with_the_shards(tmp_path):
  one = F.write_tar_shards(str(tmp_path / "one"), num_good=8, num_shards=1)
  sizes = {}
  for n in (100, 3000):  # links to one shard: the reader sees n shards
    d = tmp_path / f"n{n}"
    d.mkdir()
    for i in range(n):
      os.symlink(str(tmp_path / "one/00000.tar"), str(d / f"{i:05d}.tar"))
    it = _iterator(tar_stream.StreamSource(str(d), **EXTS))  # default cycle and window
    for _ in range(3):
      next(it)
    sizes[n] = tar_stream.state_size(it)
    it.close()
  assert all(s <= 16 << 10 for s in sizes.values()), sizes
  assert abs(sizes[3000] - sizes[100]) < 0.1 * sizes[100], sizes
  del one


def test_resume_on_another_process_count_rereads_the_epoch_and_says_so(corpus, caplog):
  src = _source(corpus["pattern"])
  states = []
  for p in (0, 1):
    it = _iterator(src, process_index=p, process_count=2, prefetch=0)
    for _ in range(7):  # into epoch 1 of each host (~20 examples an epoch)
      next(it)
    states.append(json.loads(json.dumps(it.get_state())))
    it.close()
  one = _iterator(src, prefetch=0)
  with caplog.at_level(logging.WARNING):
    state = one.remap_state(states, 0, 1)
  assert "saved by 2 processes and this run has 1" in caplog.text and "read again" in caplog.text
  earliest = min(s["e"] for st in states for s in tar_stream._shard_states(st) if not s["d"])
  assert state == {"restart_epochs": [earliest]}
  one.set_state(state)
  # The single process now reads the whole of that epoch: every example, none skipped.
  recs = _take(tar_stream.record_stream(src, seed=1, first_epochs=[earliest]), 60)
  assert set(_by_epoch(recs)[earliest]) == set(_keys_of_shards(src.corpora[0].shards))
  next(one)
  assert one.get_state()["first_epochs"] == [earliest]
  one.close()


# ------------------------------------------------------------------------------------- training

def test_killed_streaming_run_resumes_with_main_py_to_the_uninterrupted_result(tmp_path):
  """Trained in-process to step 2 and stopped (as a kill would), then resumed by `python main.py`
  to step 4: the skip counts (with a damaged shard's) and the parameters equal those of 4
  uninterrupted steps, which a repeated or skipped example would change."""
  import jax
  from rankclip_jax import train
  from test_data_sources import (_final_state, _logged_skips, _real_data_config,
                                 resume_with_main_py)
  from test_train import _run_steps
  F.write_tar_shards(str(tmp_path / "tars"), num_good=24, num_shards=3)
  F.write_tar_shards(str(tmp_path / "more"), num_good=12, num_shards=2, seed=1)
  F.damaged_shards(str(tmp_path / "tars/00000.tar"), str(tmp_path / "damaged"))
  os.replace(tmp_path / "damaged/cut_at_header.tar", tmp_path / "tars/cut.tar")
  path = f"{tmp_path / 'tars'}::{tmp_path / 'more'}"  # two sources, 2:1
  # Four shards open: the cut one (5 examples before its damage) is read through in the first step.
  overrides = {"data.train.cycle_length": 4, "data.train.shuffle_window": 16,
               "data.train.weights": "2::1"}
  config = _real_data_config("webdataset_stream", path, **overrides)
  workdir = str(tmp_path / "run")
  _run_steps(_real_data_config("webdataset_stream", path, **overrides), workdir, stop_after=2)
  assert _final_state(config, workdir)[0] == 2
  resume_with_main_py(tmp_path, "webdataset_stream", path, overrides, workdir)
  step, state = _final_state(config, workdir)
  assert step == 4
  train.train_and_evaluate(config, str(tmp_path / "uninterrupted"))
  _, full = _final_state(config, str(tmp_path / "uninterrupted"))
  counts = records.skip_counts(state.data_skipped)
  assert counts == records.skip_counts(full.data_skipped)
  assert counts["shard_truncated"] >= 1 and counts["unreadable_image"] >= 1, counts
  assert _logged_skips(workdir) == counts
  for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(state.params),
                         jax.tree.leaves(full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                               err_msg=jax.tree_util.keystr(key))
  assert len(SKIP_KINDS) == len(state.data_skipped)
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  shares = {n: [float(tensor_util.make_ndarray(e.tensor_proto))
                for e in acc.Tensors(f"data/source_share/{n}")] for n in ("tars", "more")}
  assert shares["tars"] and all(abs(a + b - 1) < 1e-6 for a, b in zip(*shares.values()))
  assert 0.5 < np.mean(shares["tars"]) < 0.85, shares  # 2/3, over windows of a few batches
