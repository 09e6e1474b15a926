"""Training end to end on 8 fake CPU devices: learning, resume, checkpoints, metrics files."""

import functools
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rankclip_synthetic
from rankclip_jax import step as step_lib
from rankclip_jax import train
from rankclip_jax.objective import make_objective

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config(**overrides):
  c = rankclip_synthetic.get_config()
  c.model.size = "micro"
  c.image_size = 32
  c.context_length = 16
  c.batch_size = 16
  c.total_steps = 6
  c.log_every_steps = 2
  c.eval_every_steps = 1000
  c.eval_batch_size = 16
  c.optim.warmup_steps = 1
  c.optim.learning_rate = 1e-3
  c.checkpoint.every_steps = 3
  c.checkpoint.keep = 2
  c.checkpoint.async_save = False
  for ev in c.evals.values():
    ev.num_examples = 16
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def fixed_batch(trainer, seed=123):
  it = trainer.train_iterator()
  return trainer.global_batch(next(it))


def test_loss_goes_down_on_8_device_mesh_in_bfloat16():
  # Compute in bf16, parameters and optimizer state in float32. (Learning in float32, the default,
  # is asserted on the demo's run in tests/test_accelerator_check.py and by the PC-CLIP fine-tune.)
  # 20 steps: the loss on the fixed batch falls by 0.43 (measured; 0.2 asserted).
  c = micro_config(total_steps=20, **{"loss.weight_schedule": "constant",
                                      "model.dtype": "bfloat16"})
  trainer = train.Trainer(c)
  assert trainer.mesh.size == 8
  state = trainer.init()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
  # The loss on one batch, before and after training: the train step's logged loss is computed
  # before its update (the objective has no randomness here and a constant weight schedule), so
  # the first step gives it at the initial parameters (its batch is the input's first) and one
  # more step on that batch, its update discarded, at the trained ones.
  batch = fixed_batch(trainer)
  it = trainer.train_iterator()
  for i in range(c.total_steps):
    local = next(it)
    if i == 0:
      np.testing.assert_array_equal(local["text"], jax.device_get(batch["text"]))
    state, metrics = trainer.train_step(state, trainer.global_batch(local))
    jax.block_until_ready(metrics)
    if i == 0:
      before = float(metrics["loss"])
  assert int(state.step) == 20
  # The ranking terms are part of the objective and were computed.
  assert float(metrics["cross_rank_loss"]) > 0 and float(metrics["inmodal_rank_loss"]) > 0
  after = float(trainer.train_step(state, batch)[1]["loss"])
  assert np.isfinite(after)
  assert after < before - 0.2, (before, after)


def test_fsdp_and_data_parallel_give_the_same_gradients_and_training():
  """Data parallel, FSDP, and FSDP with scanned layers, from the same parameters (stacked for the
  scanned layout): the same gradient, leaf by leaf, on one batch, then the same loss and gradient
  norm at each of three training steps and the same parameters after them. Gradients are compared
  before the optimizer: Adam and clipping by norm are blind to a gradient multiplied by a constant
  (a sum over the fsdp axis where a mean belongs), the gradient and its norm are not. With patch
  dropout on, so that its random draws are shown to be the same on every mesh and layout."""
  from rankclip_jax.models.transformer import with_layer_layout
  from tests.cli_runs import no_true_gradient
  fsdp = {"mesh.data": 2, "mesh.fsdp": 4, "sharding.rules": ((".*", "fsdp"),),
          "sharding.fsdp_min_size": 1}
  first = grads = None
  results = {}
  for name, over in {"dp": {"mesh.data": -1, "mesh.fsdp": 1}, "fsdp": fsdp,
                     "fsdp_scanned": dict(fsdp, **{"model.scan_layers": True})}.items():
    trainer = train.Trainer(micro_config(**over, **{"model.patch_dropout": 0.5}))
    scanned = name == "fsdp_scanned"
    if first is None:
      state = trainer.init()
      first = _params_np(state)
    else:  # the first layout's parameters, laid out and sharded for this one
      start = jax.jit(functools.partial(step_lib.init_state, trainer.tx),
                      out_shardings=trainer.state_shardings)
      state = start(with_layer_layout(first, scanned=scanned))
    batch = fixed_batch(trainer)
    f = jax.jit(functools.partial(step_lib.loss_and_grads, model=trainer.model,
                                  objective=trainer.objective))
    (_, _, _), g = f(state.params, batch, state.step, jax.random.key(0), state.loss_state)
    g = jax.tree.map(np.asarray, jax.device_get(g))
    g = with_layer_layout(g, scanned=False) if scanned else g
    if grads is None:
      grads = g
    else:
      for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(g),
                                   jax.tree.leaves(grads)):
        if no_true_gradient(path):
          assert np.abs(got).max() < 1e-6 and np.abs(want).max() < 1e-6, path
          continue
        # Rows summed in another order: within 1e-4 of the leaf's largest entry.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                   err_msg=f"{name} {jax.tree_util.keystr(path)}")
    it = trainer.train_iterator()
    logged = []
    for _ in range(3):
      state, m = trainer.train_step(state, trainer.global_batch(next(it)))
      logged.append((float(m["loss"]), float(m["grad_norm"])))
    final = _params_np(state)
    results[name] = (np.array(logged), with_layer_layout(final, scanned=False) if scanned else final)
    if name != "dp":
      encoder = state.params["image"]["encoder"]
      kernel = (encoder["blocks"] if scanned else encoder["block_0"])["mlp"]["fc1"]
      assert "fsdp" in str(kernel["kernel"].sharding.spec)
  # The gradient is not trivially zero anywhere that matters.
  assert np.abs(grads["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]).max() > 0
  want_logged, want_params = results["dp"]
  for name in ("fsdp", "fsdp_scanned"):
    got_logged, got_params = results[name]
    np.testing.assert_allclose(got_logged, want_logged, rtol=1e-5, err_msg=name)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(got_params),
                                 jax.tree.leaves(want_params)):
      if no_true_gradient(path):
        continue  # Adam steps on round-off
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("loss_name", ["rankclip", "siglip"])
def test_loss_strategies_and_gradcache_give_the_full_batch_gradient(loss_name):
  # The same params and batch through the real model on the 8-device mesh: sharded loss (default),
  # plain loss, sharded + chunked, and GradCache with 4 micro-batches (+ chunking) must all give
  # the plain full-batch loss and gradient. SigLIP for its logit bias; CyCLIP's strategies are
  # tested on the loss (test_loss_strategies.py) and GradCache does not depend on the loss.
  over = {"loss.name": loss_name, "batch_size": 32, "loss.weight_schedule": "constant"}
  if loss_name == "siglip":
    over.update({"loss.cross_weight": 0.0, "loss.inmodal_weight": 0.0})
  variants = {
      "plain": {"loss.strategy": "plain"},
      "gradcache_sharded_chunked": {"microbatches": 2, "loss.chunk_size": 2},
  }
  if loss_name == "rankclip":
    # (Sharded + chunked alone is tested on the loss itself in test_loss_strategies.py.)
    variants.update({
        "sharded": {},
        "gradcache_chunked_plain": {"microbatches": 4, "loss.chunk_size": 4,
                                    "loss.strategy": "plain"},
    })
  results = {}
  for name, extra in variants.items():
    trainer = train.Trainer(micro_config(**over, **extra))
    state = trainer.init()
    batch = fixed_batch(trainer)
    f = jax.jit(functools.partial(step_lib.loss_and_grads, model=trainer.model,
                                  objective=trainer.objective,
                                  microbatches=trainer.config.microbatches))
    (loss, metrics, _), grads = f(state.params, batch, jnp.int32(3), jax.random.key(0),
                                  state.loss_state)
    results[name] = (float(loss), jax.tree.map(np.asarray, jax.device_get(grads)))
  assert ("logit_bias" in results["plain"][1]) == (loss_name == "siglip")
  ref_loss, ref_grads = results["plain"]
  for name, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=name)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, want), got in zip(flat_ref, flat):
      # float32 sums in another order: an element near zero in a leaf whose entries reach ~6 may
      # move by a few ulps of the leaf's scale (seen on one CI CPU: 4.4e-6 on a 5.8-scale leaf),
      # so the absolute tolerance follows the leaf's largest entry; a wrong gradient (a missed
      # micro-batch or chunk) is off by O(1) of it.
      atol = 2e-6 * max(1.0, float(np.abs(want).max()))
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=atol,
                                 err_msg=f"{name} {jax.tree_util.keystr(path)}")
  # The gradient is not trivially zero anywhere that matters.
  assert np.abs(ref_grads["logit_scale"]) > 0
  assert np.abs(ref_grads["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]).max() > 0


def _params_np(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def _run_steps(config, workdir, stop_after):
  """Runs train_and_evaluate but stops (like a kill) right after step `stop_after` is saved."""
  real_save = train.checkpointing.Checkpointer.save

  class Stop(Exception):
    pass

  def save_then_stop(self, step, *a, **k):
    out = real_save(self, step, *a, **k)
    if step == stop_after:
      self.wait()
      raise Stop()
    return out

  train.checkpointing.Checkpointer.save = save_then_stop
  try:
    with pytest.raises(Stop):
      train.train_and_evaluate(config, workdir)
  finally:
    train.checkpointing.Checkpointer.save = real_save


def test_a_run_writes_results_and_tensorboard_files(uninterrupted_run):
  """What a user finds in the workdir of a finished `main.py` run (the session's reference run):
  results.json with the evaluators' metrics, and TensorBoard event files with the training and
  evaluation scalars, read back with TensorBoard's own reader."""
  from tests import cli_runs
  on_disk = json.load(open(os.path.join(uninterrupted_run, "results.json")))
  assert on_disk["step"] == cli_runs.REFERENCE_STEPS
  for key in ("zs_shape/top1", "zs_colour/top1", "zs_count/top1", "zs_heldout_combo/top1",
              "retrieval/i2t_r1", "retrieval/t2i_r10"):
    assert 0.0 <= on_disk[key] <= 1.0, key
  assert glob.glob(os.path.join(uninterrupted_run, "events.out.tfevents.*"))
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(uninterrupted_run, size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  for tag in ("train/loss", "train/clip_loss", "train/cross_rank_loss", "train/inmodal_rank_loss",
              "train/scale", "train/learning_rate", "train/grad_norm", "examples_per_sec",
              "zs_shape/top1", "retrieval/i2t_r1"):
    assert tag in tags, (tag, sorted(tags))
  # The final evaluation's scalars are the results written to results.json.
  for key in ("zs_shape/top1", "retrieval/i2t_r1"):
    assert cli_runs.logged(uninterrupted_run, key)[cli_runs.REFERENCE_STEPS] == pytest.approx(
        on_disk[key], abs=1e-6)


# Run as `python -c`: main.py, but the process kills itself (SIGKILL) when Orbax's background
# thread is about to commit the checkpoint of step 10 (its files written to the temporary folder,
# not yet renamed to checkpoints/10): a machine lost in the middle of an asynchronous save.
_KILLED_DURING_SAVE = """
import os, runpy, signal, sys
from orbax.checkpoint._src.path import atomicity
real_finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
  if self._final_path.name == "10":
    os.kill(os.getpid(), signal.SIGKILL)
  return await real_finalize(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))  # as `python main.py` does
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_killed_runs_resume_from_their_last_finished_checkpoint_as_if_never_stopped(
    tmp_path, uninterrupted_run):
  """Real processes with asynchronous saves (the default), checkpointing every 5 steps: one killed
  inside the save of step 10, its successor killed with SIGKILL from outside mid-run, the same
  command a third time to the end. Each start resumes from the last finished checkpoint (never
  from the unfinished folder), and the run ends exactly where the uninterrupted one does."""
  from tests import cli_runs
  # Started from another directory with a relative --workdir, as a user would.
  cmd = cli_runs.train_cmd("run", extra=["--config.checkpoint.every_steps=5"])
  env = cli_runs.env(cli_runs.REFERENCE_DEVICES)
  workdir = tmp_path / "run"

  # 1. Killed in the save of step 10: its files are in a temporary folder, 5 is the last finished.
  killed = subprocess.run([sys.executable, "-c", _KILLED_DURING_SAVE] + cmd[1:], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  leftovers = [d for d in os.listdir(workdir / "checkpoints") if not d.isdigit()]
  assert [d.split(".")[0] for d in leftovers] == ["10"], leftovers
  assert cli_runs.checkpoint_steps(workdir) == [5]

  # 2. The same command resumes at 5; SIGKILL once step 15 (or later) is saved.
  proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    done = cli_runs.checkpoint_steps(workdir)
    if done and max(done) >= 15:
      break
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  out = proc.communicate()[0]
  assert "Resuming at step 5/" in out, out[-3000:]
  killed_at = max(cli_runs.checkpoint_steps(workdir))
  assert 15 <= killed_at < cli_runs.REFERENCE_STEPS

  # 3. Once more, to the end.
  out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Resuming at step {killed_at}/" in out.stdout
  assert "Results (held-out evaluation)" in out.stdout
  # No temporary folder left; the last 3 (config.checkpoint.keep) checkpoints kept.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "25", "30"]
  assert json.load(open(workdir / "results.json")) == json.load(
      open(os.path.join(uninterrupted_run, "results.json")))
  # The same process and device count as the reference: the same computation, the same numbers.
  cli_runs.assert_same_training(workdir, uninterrupted_run, loss_rtol=1e-6, grad_norm_rtol=1e-6,
                                param_atol=1e-7)


def test_throughput_mfu_and_profile_are_logged(tmp_path):
  """With a peak given (CPUs have none in the table), TFLOP/s and MFU are logged from the step's
  FLOPs; the FLOPs are the model's, independent of the device count; a profile is written."""
  from rankclip_jax import flops
  c = micro_config(total_steps=4, peak_tflops=1.0, profile_steps=(2, 4), evals={})
  train.train_and_evaluate(c, str(tmp_path))
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  assert {"perf/tflops_per_sec", "perf/mfu", "perf/examples_per_sec_per_device"} <= tags
  assert glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
  trainer = train.Trainer(c)
  plain = micro_config(**{"loss.strategy": "plain"})
  one = jax.jit(functools.partial(step_lib.train_step, model=trainer.model, tx=trainer.tx,
                                  schedule=trainer.schedule, objective=make_objective(
                                      trainer.mesh, total_steps=plain.total_steps, **plain.loss)))
  # Lowered (not compiled or run) on the state's and batch's shapes, without their shardings.
  batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                  for k, v in trainer.abstract_batch().items()}
  f1 = flops.step_flops(one, trainer.abstract_state, batch_shapes)
  # Equal up to a few scalar ops: the step's key derivation (fold_in) is counted a little
  # differently with and without the trainer's in/out shardings (measured: 32 of 2.2e8 FLOPs).
  assert f1 > 1e6 and trainer.step_flops() == pytest.approx(f1, rel=1e-6)
  f1 = trainer.step_flops()  # what the trainer logs with, and what every variant below must give
  # What was logged is those FLOPs at the logged speed, over 8 devices of the given 1 TFLOP/s peak.
  from tests.cli_runs import logged
  steps_per_sec, tflops, mfu = (logged(tmp_path, tag) for tag in (
      "steps_per_sec", "perf/tflops_per_sec", "perf/mfu"))
  assert sorted(steps_per_sec) == sorted(tflops) == sorted(mfu) == [2, 4]
  for step in steps_per_sec:
    assert tflops[step] == pytest.approx(f1 * steps_per_sec[step] / 1e12, rel=1e-5)
    assert mfu[step] == pytest.approx(tflops[step] / (1.0 * 8), rel=1e-5)
  # XLA's analysis of the step as configured counts a loop body once (scanned layers, GradCache's
  # micro-batch loop), a shard_map body (the sharded loss) once for all devices, and
  # rematerialisation as work: the trainer takes the model FLOPs from the plain step instead.
  # A scanned stack computes every token of its last block (model.last_block_pooled_only applies
  # to per-layer blocks only): its model FLOPs are those of the per-layer step without it.
  every_token = train.Trainer(micro_config(**{"model.last_block_pooled_only": False})).step_flops()
  assert every_token > 1.05 * f1
  for overrides, naive_vs_model, want in (
      ({"model.scan_layers": True}, lambda f: f < 0.9 * every_token, every_token),
      ({"microbatches": 2}, lambda f: f < 0.9 * f1, f1),
      ({"model.remat": True}, lambda f: f > 1.05 * f1, f1),
      ({"loss.strategy": "sharded"}, lambda f: f < f1, f1)):
    variant = train.Trainer(micro_config(**overrides))
    naive = flops.step_flops(variant.train_step, variant.abstract_state_with_shardings(),
                             variant.abstract_batch())
    assert naive_vs_model(naive), (overrides, naive, f1)
    assert variant.step_flops() == want, overrides
  assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert flops.peak_flops_per_device("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert flops.peak_flops_per_device("TPU v5 lite", "float32") == 197e12
  assert flops.peak_flops_per_device("cpu", "float32") is None
