"""Damaged checkpoints and failed saves, on real files: a damaged latest checkpoint (a file
truncated or deleted inside a finished step) never blocks a resume, an evaluation or a load (the
newest readable one is used, with a warning; resuming moves the damaged step aside, never deletes
it); no readable checkpoint, or a damaged step asked for, is one clear error; a save that fails
(no space left) is one CheckpointError naming the folder, the step and the cause, and the earlier
checkpoints stay readable. A read error that may pass (EIO, a bucket's 503) is tried again and,
persisting, is one CheckpointError that moves nothing. The damage and the failing disk are planted
by the tests."""

import contextlib
import errno
import glob
import json
import logging
import os
import shutil
import subprocess
import threading

import jax
import jax.numpy as jnp
import numpy as np
from orbax.checkpoint._src.serialization import serialization  # where arrays are written
import pytest

import rankclip_jax
from rankclip_jax import checkpointing, model_setup, train
from rankclip_jax.checkpointing import CheckpointError
from rankclip_jax.errors import ConfigError, UserError
from tests import cli_runs

# A read of a damaged checkpoint fails in one of Orbax's concurrent reads; the others are
# abandoned, and Python reports them ("Event loop is closed", "coroutine ... was never awaited"):
# expected here.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")]

# main.py flags that make tests/cli_runs.py's recipe the config of conftest.py's `micro_run`
# (micro_config's optimizer and evaluation cadence, CLIP's layout, a checkpoint every 20 steps).
MICRO_RUN_FLAGS = [
    "--config.model.stem=patch", "--config.model.pool=cls", "--config.model.act=quick_gelu",
    "--config.optim.learning_rate=0.001", "--config.eval_every_steps=1000",
    "--config.eval_batch_size=16", "--config.checkpoint.every_steps=20",
    "--config.checkpoint.keep=2"]
MICRO_RUN_DEVICES = 8  # conftest.py's fake CPU devices, which trained it


def copy_run(micro_run, tmp_path):
  """A copy of the session's micro run (steps 20 and 40): the tests damage the copy only."""
  workdir = tmp_path / "run"
  shutil.copytree(micro_run, workdir)
  return workdir


def array_files(step_dir):
  """The array data files of a checkpoint's state (OCDBT), largest first."""
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  assert files, os.listdir(os.path.join(step_dir, "state"))
  return sorted(files, key=os.path.getsize, reverse=True)


def truncate(path, size=None):
  size = os.path.getsize(path) // 2 if size is None else size
  with open(path, "r+b") as f:
    f.truncate(size)
  return size


def warnings_of(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def params_of(workdir, step=None):
  loaded = rankclip_jax.load(str(workdir), step=step)
  return loaded.step, jax.tree.map(np.asarray, loaded.params)


def test_a_resumed_run_falls_back_past_a_truncated_latest_checkpoint_and_trains_to_the_end(
    tmp_path, micro_run):
  """main.py on a run whose step 40 has a truncated array file: it warns naming the damaged step,
  resumes from step 20, moves 40 aside (kept, still truncated), trains to the end and saves 40
  again: the same parameters as the run's own step 40 (same recipe, same device count)."""
  workdir = copy_run(micro_run, tmp_path)
  victim = array_files(workdir / "checkpoints" / "40")[0]
  size = truncate(victim)
  out = subprocess.run(
      cli_runs.train_cmd(workdir, total_steps=40, extra=MICRO_RUN_FLAGS),
      env=cli_runs.env(MICRO_RUN_DEVICES), capture_output=True, text=True, timeout=600,
      cwd=cli_runs.REPO)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "Resuming at step 20/40" in out.stdout, out.stdout[-2000:]
  folder = str(workdir / "checkpoints")
  damaged = [line for line in out.stderr.splitlines() if "is damaged" in line]
  assert len(damaged) == 1 and f"{folder}/40 " in damaged[0], out.stderr[-3000:]
  assert "moved the damaged checkpoint" in out.stderr.lower()
  # Moved aside, not deleted nor repaired; training wrote step 40 again.
  assert sorted(os.listdir(folder)) == ["20", "40", "40.damaged"]
  kept = victim.replace(f"{folder}/40/", f"{folder}/40.damaged/")
  assert os.path.getsize(kept) == size
  assert json.load(open(workdir / "results.json"))["step"] == 40
  got_step, got = params_of(workdir)
  want_step, want = params_of(micro_run)
  assert got_step == want_step == 40
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    if not cli_runs.no_true_gradient(path):  # (bit-identical here, the key biases included)
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_restore_falls_back_past_a_deleted_file_and_moves_the_damaged_step_aside(
    tmp_path, micro_run, caplog):
  """Checkpointer.restore (the resume) with an array file of step 40 deleted: step 20 and its data
  position; 40 renamed 40.damaged with all its other files, which Orbax neither lists nor cleans
  up, and step 40 can be saved again. Damaged again, 40 goes to 40.damaged-1, and every newer
  damaged step goes too (a truncated array file, a deleted data position, a deleted config);
  nothing readable at all is a CheckpointError, and then nothing moves."""
  workdir = copy_run(micro_run, tmp_path)
  folder = workdir / "checkpoints"

  def files(step_dir):
    return sorted(os.path.relpath(p, step_dir) for p in glob.glob(f"{step_dir}/**", recursive=True))

  os.remove(array_files(folder / "40")[0])
  files_left = files(folder / "40")
  position = json.load(open(folder / "20" / "data" / "process_0-of-1.json"))
  ck = checkpointing.Checkpointer(str(folder), every_steps=20, keep=3, async_save=False)
  trainer = train.Trainer(ck.saved_config(20))
  config_dict = ck.restore_config(20)
  abstract = trainer.abstract_state_with_shardings()
  data = trainer.train_iterator()
  with caplog.at_level(logging.WARNING):
    step, state = ck.restore(abstract, data)
  assert step == 20 and data.get_state() == position
  assert any(f"{folder}/40 is damaged" in m for m in warnings_of(caplog)), warnings_of(caplog)
  assert sorted(os.listdir(folder)) == ["20", "40.damaged"]
  assert files(folder / "40.damaged") == files_left  # all that was left of it, kept
  assert ck.all_steps() == [20] and ck.latest_step() == 20  # Orbax's list was refreshed
  assert ck.save(40, state, data, config_dict, force=True)
  ck.close()

  # A new manager (its start cleans up temporary folders; a save waits for that) keeps the
  # damaged folder and does not list it.
  ck = checkpointing.Checkpointer(str(folder), every_steps=20, keep=4, async_save=False)
  assert ck.all_steps() == [20, 40]
  for step in (41, 42):
    next(data)  # each with its own data position
    ck.save(step, state, data, config_dict, force=True)
  assert ck.all_steps() == [20, 40, 41, 42] and files(folder / "40.damaged") == files_left
  # Three more kinds of damage: an array file truncated, the data position or the config deleted.
  truncate(array_files(folder / "40")[0])
  os.remove(folder / "41" / "data" / "process_0-of-1.json")
  os.remove(folder / "42" / "config" / "metadata")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert ck.restore(abstract, data)[0] == 20
  assert data.get_state() == position
  assert sorted(os.listdir(folder)) == [
      "20", "40.damaged", "40.damaged-1", "41.damaged", "42.damaged"]
  assert ck.all_steps() == [20]
  moved = [m for m in warnings_of(caplog) if m.startswith("Moved the damaged checkpoint")]
  assert len(moved) == 3, warnings_of(caplog)

  truncate(folder / "20" / "state" / "_METADATA")
  with pytest.raises(CheckpointError, match=r"no checkpoint can be read \(step 20: "):
    ck.restore(abstract, data)
  ck.close()
  assert sorted(os.listdir(folder)) == [
      "20", "40.damaged", "40.damaged-1", "41.damaged", "42.damaged"]


def test_no_readable_checkpoint_is_one_error_line_naming_the_folder(tmp_path, micro_run):
  """main.py on a run whose every checkpoint is damaged (truncated state metadata): exit status
  1, one `Error:` line naming the folder and each step, no traceback; nothing moved or deleted."""
  workdir = copy_run(micro_run, tmp_path)
  folder = workdir / "checkpoints"
  for step in (20, 40):
    truncate(folder / str(step) / "state" / "_METADATA", 100)  # the same 100 bytes: one reason
  out = subprocess.run(
      cli_runs.train_cmd(workdir, total_steps=60, extra=MICRO_RUN_FLAGS),
      env=cli_runs.env(2), capture_output=True, text=True, timeout=600, cwd=cli_runs.REPO)
  assert out.returncode == 1, out.stderr[-3000:]
  errors = [line for line in out.stderr.splitlines() if line.startswith("Error:")]
  assert len(errors) == 1, out.stderr[-3000:]
  assert f"Error: {folder}: no checkpoint can be read (steps 40, 20: JSONDecodeError" in errors[0]
  assert "move this folder elsewhere" in errors[0]
  assert "Traceback" not in out.stderr, out.stderr[-3000:]
  assert sorted(os.listdir(folder)) == ["20", "40"]


def test_the_cause_is_described_in_one_line():
  """What the messages quote of an Orbax error: its innermost cause on one line, the tensorstore
  spec it ends with cut off, a long middle elided, the end (the file, the OS error) kept."""
  spec = r'{\"driver\":\"zarr\",\"path\":\"params.w/\"}'  # as tensorstore escapes it
  folder = "/runs/demo/checkpoints/40/state/"
  read = ValueError(
      f'OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database at local file "{folder}":\n'
      f'Requested byte range [0, 250431) is not valid for value of size 125215 '
      f"[tensorstore_spec='{spec}'] [tensorstore_spec[1]='{spec}']")
  wrapped = Exception("Encountered error while reading array index: (slice(0, 8, 1),).")
  wrapped.__cause__ = read  # as Orbax raises it: a plain Exception from tensorstore's error
  got = checkpointing.describe(wrapped)
  assert got == (f'ValueError: OUT_OF_RANGE: Error reading "params.w/0.0" in OCDBT database at '
                 f'local file "{folder}": Requested byte range [0, 250431) is not valid for '
                 "value of size 125215")
  full = ValueError("RESOURCE_EXHAUSTED: Error writing " + "x" * 1000 + " No space left on device "
                    "[os_error_code='28']")
  got = checkpointing.describe(full)
  assert len(got) < 500 and " ... " in got and got.startswith("ValueError: RESOURCE_EXHAUSTED")
  assert got.endswith("No space left on device [os_error_code='28']")
  assert checkpointing.describe(KeyError('Item "state" was not found.')) == (
      'KeyError: Item "state" was not found.')
  assert checkpointing.is_damage(wrapped) and checkpointing.is_damage(read)
  assert not checkpointing.is_damage(ConfigError("config.x")) and not checkpointing.is_damage(
      TypeError("a bug"))


def tree(value):
  return {"w": jnp.full((256,), float(value)), "inner": {"b": jnp.arange(8) + value}}


@pytest.fixture
def failing_disk(monkeypatch):
  """Every array write of a save raises OSError(ENOSPC) while `failing_disk.on` (planted where
  Orbax's serialization writes each array through tensorstore, where a real full disk fails)."""
  real = serialization.async_serialize_from_host
  state = type("FailingDisk", (), {"on": False})()

  async def write(*args, **kwargs):
    if state.on:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await real(*args, **kwargs)

  monkeypatch.setattr(serialization, "async_serialize_from_host", write)
  return state


def assert_save_error(e, folder, step):
  message = str(e)
  assert isinstance(e, UserError) and isinstance(e, OSError)
  assert "\n" not in message
  assert message.startswith(f"{folder}: the checkpoint of step {step} could not be written")
  assert "[Errno 28] No space left on device" in message
  assert "it is not kept; the checkpoints there, [1, 2], are as they were" in message


def assert_intact(folder):
  """Steps 1 and 2 as saved, step 3 not a step (its temporary folder aside)."""
  ck = checkpointing.Checkpointer(folder, every_steps=1, keep=2, async_save=False)
  try:
    assert ck.all_steps() == [1, 2]
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            tree(0))
    for step in (2, 1):
      got_step, got = ck.restore(abstract, step=step)
      assert got_step == step
      jax.tree.map(np.testing.assert_array_equal, got, tree(step))
    assert ck.restore(abstract)[0] == 2
  finally:
    ck.close()


@pytest.mark.parametrize("async_save,surfaces", [
    (False, "save"), (True, "wait"), (True, "next save"), (True, "close")])
def test_a_failed_save_is_one_checkpoint_error_and_the_earlier_checkpoints_stay(
    tmp_path, failing_disk, async_save, surfaces):
  """No space left while step 3 is written: a CheckpointError naming the folder, step 3 and the
  cause, from the save itself (synchronous) or, asynchronous, from whatever waits for it next
  (wait, the next save, close). Steps 1 and 2 stay listed and readable (keep=2 would have
  removed step 1 had step 3 been written), step 3 is never listed, and closing does not raise
  again or hang."""
  folder = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(folder, every_steps=1, keep=2, async_save=async_save)
  ck.save(1, tree(1))
  ck.save(2, tree(2))
  ck.wait()
  failing_disk.on = True
  with pytest.raises(CheckpointError) as e:
    if surfaces == "save":
      ck.save(3, tree(3))
    else:
      assert ck.save(3, tree(3))  # started; the error comes with what waits for it
      {"wait": ck.wait, "next save": lambda: ck.save(4, tree(4)), "close": ck.close}[surfaces]()
  failing_disk.on = False
  assert_save_error(e.value, folder, 3)
  assert ck.all_steps() == [1, 2] and "3" not in os.listdir(folder)
  raised = []

  def close():
    try:
      ck.close()
    except Exception as e:  # pylint: disable=broad-except
      raised.append(e)

  closing = threading.Thread(target=close)  # Orbax raises a failure once per waiting thread
  closing.start()
  closing.join(timeout=120)
  assert not closing.is_alive() and not raised, raised
  assert_intact(folder)


def test_closing_after_a_failed_save_keeps_the_first_error(tmp_path, failing_disk, caplog):
  """As train.py's teardown closes the Checkpointer: the error of the save propagates alone
  (closing raises nothing over it); a save that fails while another error is on its way is
  logged, and the other error stays the one raised."""
  folder = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(folder, every_steps=1, keep=2, async_save=True)
  ck.save(1, tree(1))
  ck.save(2, tree(2))
  ck.wait()
  failing_disk.on = True
  with pytest.raises(CheckpointError) as e:
    with contextlib.ExitStack() as teardown:
      teardown.callback(ck.close)
      ck.save(3, tree(3))
      ck.wait()
  assert not isinstance(e.value.__context__, CheckpointError)  # close raised nothing over it
  assert_save_error(e.value, folder, 3)

  ck = checkpointing.Checkpointer(folder, every_steps=1, keep=2, async_save=True)
  with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="the training failed"):
    with contextlib.ExitStack() as teardown:
      teardown.callback(ck.close)
      ck.save(3, tree(3))
      raise RuntimeError("the training failed")
  failing_disk.on = False
  assert any(r.getMessage().startswith(f"{folder}: the checkpoint of step 3 could not be written")
             for r in caplog.records), [r.getMessage() for r in caplog.records]
  assert_intact(folder)


@pytest.fixture
def failing_reads(monkeypatch):
  """The next `failing_reads.count` array reads raise `failing_reads.error` (planted where Orbax
  reads each array through tensorstore, where a disk's EIO or a bucket's 503 surfaces)."""
  real = serialization._read_shard
  state = type("FailingReads", (), {"count": 0, "error": None, "raised": 0})()

  async def read(*args, **kwargs):
    if state.count > 0:
      state.count -= 1
      state.raised += 1
      raise state.error
    return await real(*args, **kwargs)

  monkeypatch.setattr(serialization, "_read_shard", read)
  return state


# Errors of a storage fault that may pass: an OS error; tensorstore's, a ValueError "<CODE>: ..."
# (tensorstore's python/tensorstore/status.cc), for a bucket's 503 and for a local file's EIO
# (which tensorstore/internal/os/error_code.cc reports as FAILED_PRECONDITION with the OS error).
READ_FAULTS = {
    "EIO": OSError(errno.EIO, os.strerror(errno.EIO)),
    "UNAVAILABLE": ValueError('UNAVAILABLE: Error reading "w/0.0" in OCDBT database at '
                              '"gs://bucket/run/checkpoints/2/state/": HTTP response code: 503'),
    "tensorstore EIO": ValueError('FAILED_PRECONDITION: Error reading local file "/run/'
                                  'checkpoints/2/state/d/0": [OS error 5: EIO Input/output error]'),
}


@pytest.mark.parametrize("fault", sorted(READ_FAULTS))
def test_a_read_error_that_may_pass_is_tried_again_and_never_moves_a_checkpoint(
    tmp_path, failing_reads, caplog, fault):
  """A resume whose first read of the newest checkpoint fails with a storage fault (EIO, a 503):
  tried again, it resumes from that newest step, nothing renamed. The fault persisting: a
  CheckpointError naming the step and the cause and saying nothing was moved, no fallback to an
  older step, nothing renamed; a read-only Checkpointer (evaluate, load) stops the same way.
  Proven damage (a truncated array file) still falls back, and read-only moves nothing."""
  folder = str(tmp_path / "checkpoints")
  ck = checkpointing.Checkpointer(folder, every_steps=1, keep=2, async_save=False)
  ck.retry_delay_s = 0.001
  ck.save(1, tree(1))
  ck.save(2, tree(2))
  ck.wait()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          tree(0))
  failing_reads.error, failing_reads.count = READ_FAULTS[fault], 1
  with caplog.at_level(logging.WARNING):
    step, got = ck.restore(abstract)
  assert step == 2 and failing_reads.raised == 1
  jax.tree.map(np.testing.assert_array_equal, got, tree(2))
  assert sorted(os.listdir(folder)) == ["1", "2"] and ck.all_steps() == [1, 2]
  assert any(m.startswith(f"Reading checkpoint {folder}/2 failed (") and "trying again" in m
             for m in warnings_of(caplog)), warnings_of(caplog)

  failing_reads.count = 10**6
  with pytest.raises(CheckpointError) as e:
    ck.restore(abstract)
  message = str(e.value)
  assert message.startswith(f"{folder}/2: the checkpoint of step 2 could not be read in 5 tries (")
  assert ("Input/output error" in message or "503" in message) and "\n" not in message
  assert "nothing was moved" in message and not checkpointing.is_damage(e.value)
  assert sorted(os.listdir(folder)) == ["1", "2"] and ck.all_steps() == [1, 2]
  reader = checkpointing.Checkpointer(folder, read_only=True, retry_delay_s=0.001)
  with pytest.raises(CheckpointError, match="step 2 could not be read in 5 tries"):
    reader.restore(abstract)
  failing_reads.count = 0

  truncate(array_files(os.path.join(folder, "2"))[0])
  assert reader.restore(abstract)[0] == 1
  assert sorted(os.listdir(folder)) == ["1", "2"]  # read-only: the damaged step left in place
  reader.close()
  assert ck.restore(abstract)[0] == 1
  assert sorted(os.listdir(folder)) == ["1", "2.damaged"]
  ck.close()


def test_evaluation_and_load_fall_back_past_a_damaged_latest_checkpoint(tmp_path, micro_run,
                                                                        caplog):
  """evaluate_run and rankclip_jax.load on a run whose step 40 has a truncated array file use
  step 20 (config and parameters), saying so, and move nothing (they only read); asked for step
  40, a CheckpointError naming it and what is wrong. A damaged config falls back the same way."""
  from rankclip_jax.evaluate import evaluate_run  # pylint: disable=g-import-not-at-top
  workdir = copy_run(micro_run, tmp_path)
  folder = workdir / "checkpoints"
  for path in array_files(folder / "40"):  # all: only the parameters are read
    truncate(path)
  with caplog.at_level(logging.WARNING):
    step, _ = evaluate_run(str(workdir))
  assert step == 20 and (workdir / "eval" / "results_20.json").exists()
  assert any(f"{folder}/40 is damaged" in m for m in warnings_of(caplog)), warnings_of(caplog)
  with pytest.raises(CheckpointError) as e:
    evaluate_run(str(workdir), step=40)
  message = str(e.value)
  assert message.startswith(f"{folder}/40: the checkpoint of step 40 cannot be read (")
  assert f"{folder}/40/state" in message and "\n" not in message  # the file that failed
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    loaded_step, loaded = params_of(workdir)
  assert loaded_step == 20
  assert any(f"{folder}/40 is damaged" in m for m in warnings_of(caplog)), warnings_of(caplog)
  jax.tree.map(np.testing.assert_array_equal, loaded, params_of(workdir, step=20)[1])
  with pytest.raises(CheckpointError, match="the checkpoint of step 40 cannot be read"):
    rankclip_jax.load(str(workdir), step=40)
  with pytest.raises(CheckpointError, match="the checkpoint of step 40 cannot be read"):
    rankclip_jax.load(str(folder / "40"))
  assert sorted(os.listdir(folder)) == ["20", "40"]  # read-only: nothing moved

  def check(config):  # a use that cannot take this run: its error, not a fallback
    raise ConfigError(f"config.model.size={config.model.size!r}: not for this use.")
  with pytest.raises(ConfigError, match="not for this use"):
    model_setup.restore_run(str(workdir), check=check)

  # The config of the latest step damaged, its parameters intact: config and parameters both
  # come from step 20.
  shutil.rmtree(workdir)
  workdir = copy_run(micro_run, tmp_path)
  os.remove(workdir / "checkpoints" / "40" / "config" / "metadata")
  assert params_of(workdir)[0] == 20
  assert evaluate_run(str(workdir))[0] == 20
