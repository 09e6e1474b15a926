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
from rankclip_jax import train

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


def eval_loss(trainer, state, batch):
  (loss, _), _ = jax.jit(functools.partial(
      train.loss_and_grads, model=trainer.model, objective=trainer.objective))(
          state.params, batch, jnp.int32(0))
  return float(loss)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loss_goes_down_on_8_device_mesh(dtype):
  # bfloat16: compute in bf16, parameters and optimizer state in float32.
  c = micro_config(total_steps=40, **{"loss.weight_schedule": "constant", "model.dtype": dtype})
  trainer = train.Trainer(c)
  assert trainer.mesh.size == 8
  state = trainer.init()
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
  batch = fixed_batch(trainer)
  before = eval_loss(trainer, state, batch)
  it = trainer.train_iterator()
  for _ in range(c.total_steps):
    state, metrics = trainer.train_step(state, trainer.global_batch(next(it)))
    jax.block_until_ready(metrics)
  after = eval_loss(trainer, state, batch)
  assert int(state.step) == 40
  assert np.isfinite(after)
  assert after < before - 0.2, (before, after)
  # The ranking terms are part of the objective and were computed.
  assert float(metrics["cross_rank_loss"]) > 0 and float(metrics["inmodal_rank_loss"]) > 0


def test_fsdp_and_data_parallel_give_the_same_loss():
  """Data parallel, FSDP, and FSDP with scanned layers (started from the same parameters,
  stacked) train with the same losses."""
  from rankclip_jax.models.transformer import with_layer_layout
  losses = {}
  fsdp = {"mesh.data": 2, "mesh.fsdp": 4, "sharding.rules": ((".*", "fsdp"),),
          "sharding.fsdp_min_size": 1}
  first = None
  for name, over in {"dp": {"mesh.data": -1, "mesh.fsdp": 1}, "fsdp": fsdp,
                     "fsdp_scanned": dict(fsdp, **{"model.scan_layers": True})}.items():
    trainer = train.Trainer(micro_config(**over))
    state = trainer.init()
    if first is None:
      first = jax.tree.map(np.asarray, jax.device_get(state.params))
    elif name == "fsdp_scanned":
      start = jax.jit(functools.partial(train.init_state, trainer.model, trainer.tx, None,
                                        config=trainer.config),
                      out_shardings=trainer.state_shardings)
      state = start(params=with_layer_layout(first, scanned=True))
    it = trainer.train_iterator()
    out = []
    for _ in range(3):
      state, m = trainer.train_step(state, trainer.global_batch(next(it)))
      out.append(float(m["loss"]))
    losses[name] = out
    if name != "dp":
      encoder = state.params["image"]["encoder"]
      kernel = (encoder["blocks"] if name == "fsdp_scanned" else encoder["block_0"])["mlp"]["fc1"]
      assert "fsdp" in str(kernel["kernel"].sharding.spec)
  np.testing.assert_allclose(losses["dp"], losses["fsdp"], rtol=1e-4)
  np.testing.assert_allclose(losses["dp"], losses["fsdp_scanned"], rtol=1e-4)


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
    f = jax.jit(functools.partial(train.loss_and_grads, model=trainer.model,
                                  objective=trainer.objective,
                                  microbatches=trainer.config.microbatches))
    (loss, metrics), grads = f(state.params, batch, jnp.int32(3))
    results[name] = (float(loss), jax.tree.map(np.asarray, jax.device_get(grads)))
  assert ("logit_bias" in results["plain"][1]) == (loss_name == "siglip")
  ref_loss, ref_grads = results["plain"]
  for name, (loss, grads) in results.items():
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, err_msg=name)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_grads)
    flat = jax.tree.leaves(grads)
    assert len(flat) == len(flat_ref)
    for (path, want), got in zip(flat_ref, flat):
      np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6,
                                 err_msg=f"{name} {jax.tree_util.keystr(path)}")
  # The gradient is not trivially zero anywhere that matters.
  assert np.abs(ref_grads["logit_scale"]) > 0
  assert np.abs(ref_grads["image"]["encoder"]["block_0"]["mlp"]["fc1"]["kernel"]).max() > 0


def _params_np(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path):
  # Uninterrupted: 6 steps. Interrupted: 3 steps, stop, then the same command for 6 steps.
  full = micro_config(total_steps=6)
  r_full = train.train_and_evaluate(full, str(tmp_path / "full"))
  first = micro_config(total_steps=6)
  trainer = train.Trainer(first)
  # Simulate the interruption by training a 3-step run in the same workdir first...
  part = micro_config(total_steps=6)
  part.checkpoint.every_steps = 3
  _run_steps(part, str(tmp_path / "resumed"), stop_after=3)
  assert sorted(int(os.path.basename(p)) for p in
                glob.glob(str(tmp_path / "resumed/checkpoints/*"))) == [3]
  r_resumed = train.train_and_evaluate(micro_config(total_steps=6), str(tmp_path / "resumed"))
  from rankclip_jax import checkpointing
  states = []
  for d in ("full", "resumed"):
    ck = checkpointing.Checkpointer(str(tmp_path / d / "checkpoints"), every_steps=3, keep=2)
    step, st = ck.restore(trainer.abstract_state_with_shardings())
    assert step == 6
    states.append(_params_np(st))
    ck.close()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *states)
  assert r_full == pytest.approx(r_resumed, rel=1e-4, abs=1e-5)


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


def test_outputs_results_tensorboard_and_keeps_last_k_checkpoints(tmp_path):
  c = micro_config(total_steps=9)
  results = train.train_and_evaluate(c, str(tmp_path))
  on_disk = json.load(open(tmp_path / "results.json"))
  assert on_disk["step"] == 9
  for key in ("zs_shape/top1", "zs_colour/top1", "zs_count/top1", "zs_heldout_combo/top1",
              "retrieval/i2t_r1", "retrieval/t2i_r10"):
    assert 0.0 <= on_disk[key] <= 1.0 and on_disk[key] == pytest.approx(results[key])
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(str(tmp_path / "checkpoints/*")))
  assert steps == [6, 9]  # every 3 steps, keep 2
  # TensorBoard event files, read back with TensorBoard's own reader.
  from tensorboard.backend.event_processing import event_accumulator
  events = glob.glob(str(tmp_path / "events.out.tfevents.*"))
  assert events
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  for tag in ("train/loss", "train/clip_loss", "train/cross_rank_loss", "train/inmodal_rank_loss",
              "train/scale", "train/learning_rate", "train/grad_norm", "examples_per_sec",
              "zs_shape/top1", "retrieval/i2t_r1"):
    assert tag in tags, (tag, sorted(tags))


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
  """A real process killed with SIGKILL mid-run; the same command continues, not from step 0."""
  workdir = str(tmp_path / "run")
  # Started from another directory with a relative --workdir, as a user would.
  cmd = [sys.executable, os.path.join(REPO, "main.py"),
         f"--config={os.path.join(REPO, 'configs/rankclip_synthetic.py')}", "--workdir=run", "--config.model.size=micro", "--config.image_size=32",
         "--config.context_length=16", "--config.batch_size=16", "--config.total_steps=60",
         "--config.optim.warmup_steps=10",
         "--config.checkpoint.every_steps=5", "--config.log_every_steps=5",
         "--config.checkpoint.async_save=False"] + [
             f"--config.evals.{e}.num_examples=16" for e in
             ("zs_shape", "zs_colour", "zs_count", "zs_heldout_combo", "retrieval", "diagnostics")]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  ckdir = os.path.join(workdir, "checkpoints")
  while time.time() < deadline:
    done = [int(d) for d in os.listdir(ckdir) if d.isdigit()] if os.path.isdir(ckdir) else []
    if done and max(done) >= 10:
      break
    assert proc.poll() is None, proc.stdout.read()
    time.sleep(0.5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(int(d) for d in os.listdir(ckdir) if d.isdigit())
  assert 10 <= killed_at < 60
  out = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"Resuming at step {killed_at}/" in out.stdout
  assert "Results (held-out evaluation)" in out.stdout
  assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 60


def test_throughput_mfu_and_profile_are_logged(tmp_path):
  """With a peak given (CPUs have none in the table), TFLOP/s and MFU are logged from the step's
  FLOPs; the FLOPs are the model's, independent of the device count; a profile is written."""
  from rankclip_jax import flops
  c = micro_config(total_steps=4, peak_tflops=1.0, profile_steps=(2, 4))
  train.train_and_evaluate(c, str(tmp_path))
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  tags = set(acc.Tags()["tensors"])
  assert {"perf/tflops_per_sec", "perf/mfu", "perf/examples_per_sec_per_device"} <= tags
  assert glob.glob(str(tmp_path / "profile" / "**" / "*.xplane.pb"), recursive=True)
  trainer = train.Trainer(c)
  batch = fixed_batch(trainer)
  one = jax.jit(functools.partial(train.train_step, model=trainer.model, tx=trainer.tx,
                                  schedule=trainer.schedule, objective=train.make_objective(
                                      micro_config(**{"loss.strategy": "plain"}), trainer.mesh)))
  f1 = flops.step_flops(one, jax.device_get(trainer.init()), jax.device_get(batch))
  assert f1 > 1e6 and trainer.step_flops() == f1
  # XLA's analysis of the step as configured counts a loop body once (scanned layers, GradCache's
  # micro-batch loop), a shard_map body (the sharded loss) once for all devices, and
  # rematerialisation as work: the trainer takes the model FLOPs from the plain step instead.
  for overrides, naive_vs_model in (({"model.scan_layers": True}, lambda f: f < 0.9 * f1),
                                    ({"microbatches": 2}, lambda f: f < 0.9 * f1),
                                    ({"model.remat": True}, lambda f: f > 1.05 * f1),
                                    ({"loss.strategy": "sharded"}, lambda f: f < f1)):
    variant = train.Trainer(micro_config(**overrides))
    naive = flops.step_flops(variant.train_step, variant.abstract_state_with_shardings(),
                             variant.abstract_batch())
    assert naive_vs_model(naive), (overrides, naive, f1)
    assert variant.step_flops() == f1, overrides
  assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert flops.peak_flops_per_device("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert flops.peak_flops_per_device("TPU v5 lite", "float32") == 197e12
  assert flops.peak_flops_per_device("cpu", "float32") is None
