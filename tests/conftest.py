"""Test setup: 8 fake CPU devices for mesh/sharding tests (must be set before jax is imported)."""

import os

# XLA CPU's older fusion emitters (one LLVM function per fusion; the newer ones run an MLIR pass
# pipeline for each): a micro train step compiles in ~0.6x the time and runs ~10% slower (demo
# step, full optimisations; docs/performance.md, "The suite's compiler flags"). The suite compiles
# far more than it runs, so its tests and every process they start use them (tests/cli_runs.py
# xla_flags). An XLA flag that a jaxlib does not know aborts the process, so the controller tries
# it in a subprocess first; pytest-xdist's workers inherit the verdict.
# `RANKCLIP_JAX_TEST_XLA_FLAGS= pytest ...` runs the suite with XLA's default emitters (whatever
# that variable holds is used as given).
_SUITE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
if "RANKCLIP_JAX_TEST_XLA_FLAGS" not in os.environ:
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  _probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                          env=dict(os.environ, XLA_FLAGS=_SUITE_XLA_FLAGS, JAX_PLATFORMS="cpu"))
  os.environ["RANKCLIP_JAX_TEST_XLA_FLAGS"] = _SUITE_XLA_FLAGS if _probe.returncode == 0 else ""
for _flag in (os.environ["RANKCLIP_JAX_TEST_XLA_FLAGS"], "--xla_force_host_platform_device_count=8"):
  if _flag and _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()
# The suite's models are micro-sized, so much of its time is XLA compiling them (a micro train
# step on 8 devices, on a 2-vCPU VM: ~18 s to compile with XLA's defaults on 2026-12-03, 2.5 s with
# the settings here, ~0.1 s to run). JAX's "disable most
# optimizations" (LLVM at level 0, its expensive passes off; XLA's HLO passes, fusion, sharding
# and buffer assignment unchanged) compiles about twice as fast and runs about half as fast. It is
# a per-compilation option: the processes that tests start inherit it from this environment, and
# the few tests that train long enough for running to outweigh compiling turn it off
# (the `optimized_xla` fixture).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The training command starts itself again with this glibc tunable on CPU hosts
# (rankclip_jax/host_memory.py); given here, the runs that tests start go on without a second start.
os.environ.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A compilation cache for this session only (a fresh directory each run, so nothing carries over
# between runs): the many tests that build the same tiny model and step, in this process and in the
# subprocesses they start, compile each computation once. Results are unchanged; only XLA compile
# time is saved (about a third of the suite's time).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rankclip_jax_test_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

from absl import flags  # pylint: disable=g-import-not-at-top

# grain reads absl flags; outside app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if hasattr(session.config, "workerinput"):
    return  # a pytest-xdist worker: the cache is shared, the controller removes it at the end
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
  if os.path.basename(cache).startswith("rankclip_jax_test_xla_cache_"):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(cache, ignore_errors=True)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def optimized_xla():
  """XLA's full optimisations for this test's compilations (see JAX_DISABLE_MOST_OPTIMIZATIONS
  above): for tests that run many steps, where running costs more than compiling."""
  import jax  # pylint: disable=g-import-not-at-top
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)

# The longest modules first (seconds of work each, measured with -n 2 on a 2-vCPU Intel VM on
# 2026-12-05: test_train ~165, test_multihost ~130, test_open_clip ~85, test_accelerator_check and
# test_pcclip ~55, test_sweep and test_data_sources ~45, then ~40-30 each), so that with
# pytest-xdist no long module starts last and runs alone at the end; the rest (under 20 s each)
# keep their order.
_LONGEST_FIRST = ("test_train", "test_multihost", "test_open_clip", "test_accelerator_check",
                  "test_pcclip", "test_sweep", "test_data_sources", "test_benchmarks",
                  "test_models", "test_evaluate", "test_nonfinite", "test_alip",
                  "test_workdir", "test_checkpoint_faults", "test_weight_files",
                  "test_loss_strategies", "test_patch_dropout", "test_inference")


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable within a module

MICRO_RUN_STEPS = 40


def _build_once(tmp_path_factory, worker_id, name, build):
  """<session dir>/<name>, built by `build(workdir)` once per test session: with pytest-xdist the
  first worker to need it builds it under a file lock in the directory all workers share, the
  others wait and reuse it (a finished build leaves <name>/results.json)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.getbasetemp()
  if worker_id != "master":
    root = root.parent  # the session's directory, above each worker's own
  workdir = root / name
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (workdir / "results.json").exists():
      build(workdir)
  return str(workdir)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, worker_id):
  """One real trained micro run in CLIP's layout (linear patch stem, class token, quick_gelu), shared
  by the tests that need a trained checkpoint (notebook, OpenCLIP export, PC-CLIP fine-tuning).
  Tests only read it (the PC-CLIP test also writes its evaluation of it under eval/)."""
  from tests.test_train import micro_config  # pylint: disable=g-import-not-at-top
  from rankclip_jax import train  # pylint: disable=g-import-not-at-top

  def build(workdir):
    config = micro_config(total_steps=MICRO_RUN_STEPS, evals={}, **{
        "model.stem": "patch", "model.pool": "cls", "model.act": "quick_gelu",
        "checkpoint.every_steps": 20, "log_every_steps": 20})
    train.train_and_evaluate(config, str(workdir))
  return _build_once(tmp_path_factory, worker_id, "micro_run", build)


@pytest.fixture(scope="session")
def uninterrupted_run(tmp_path_factory, worker_id):
  """tests/cli_runs.py's recipe trained from start to end by one `main.py` process on 2 CPU
  devices, never stopped: what every interrupted-and-resumed run of that recipe (SIGKILL, a kill
  during an asynchronous save, SIGTERM across process counts) must reproduce."""
  import subprocess  # pylint: disable=g-import-not-at-top
  from tests import cli_runs  # pylint: disable=g-import-not-at-top

  def build(workdir):
    out = subprocess.run(cli_runs.train_cmd(workdir, extra=["--config.metric_writer=auto"]),
                         env=cli_runs.env(cli_runs.REFERENCE_DEVICES),
                         capture_output=True, text=True, timeout=600, cwd=cli_runs.REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return _build_once(tmp_path_factory, worker_id, "uninterrupted_run", build)
