"""What a run tells its user: the progress line and training scalars, evaluation results (metric
writer, results table, pictures), the config as TensorBoard hparams, and the profiler trace."""

from __future__ import annotations

import io
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from rankclip_jax.data.records import skip_counts

# Loss terms shown on the progress line when the loss reports them: (metric, short name).
_PROGRESS_TERMS = (("clip_loss", "clip"), ("cross_rank_loss", "cross"),
                   ("inmodal_rank_loss", "inmodal"), ("cross_cyclic_loss", "cross"),
                   ("inmodal_cyclic_loss", "inmodal"), ("bias", "bias"),
                   ("caption_clip_loss", "caption clip"), ("alip_weight_sample", "w_s"))


def say(msg: str):
  """The user-facing progress lines: stdout on the first process only."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
  """Every `every` steps (and the last): training scalars to the metric writer (loss terms, rates,
  TFLOP/s and MFU when the step's FLOPs are known, skipped examples) and one progress line."""

  def __init__(self, writer, *, total_steps: int, every: int, batch_size: int, start_step: int,
               flops_per_step: float | None = None, peak_flops: float | None = None):
    self.writer, self.total, self.every, self.batch_size = writer, total_steps, every, batch_size
    self.flops_per_step, self.peak = flops_per_step, peak_flops
    self.t_start = time.time()
    self.t_last, self.step_last = self.t_start, start_step

  def due(self, step: int) -> bool:
    return step % self.every == 0 or step == self.total

  def restart_clock(self):
    """After an evaluation: its time is not training throughput."""
    self.t_last = time.time()

  def report(self, step: int, metrics) -> dict[str, float]:
    metrics = jax.device_get(metrics)
    now = time.time()
    steps_per_s = (step - self.step_last) / max(now - self.t_last, 1e-9)
    self.t_last, self.step_last = now, step
    skipped = skip_counts(metrics.pop("data_skipped"))
    scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
    scalars.update({f"data/skipped/{k}": v for k, v in skipped.items()})
    scalars.update({"examples_per_sec": steps_per_s * self.batch_size,
                    "steps_per_sec": steps_per_s,
                    "perf/examples_per_sec_per_device":
                        steps_per_s * self.batch_size / jax.device_count()})
    if self.flops_per_step:
      scalars["perf/tflops_per_sec"] = self.flops_per_step * steps_per_s / 1e12
      if self.peak:
        scalars["perf/mfu"] = self.flops_per_step * steps_per_s / (self.peak * jax.device_count())
    self.writer.write_scalars(step, scalars)
    nonfinite = int(scalars.get("train/skipped_nonfinite_steps", 0))
    terms = ", ".join(f"{short} {scalars['train/' + key]:.4f}"
                      for key, short in _PROGRESS_TERMS if "train/" + key in scalars)
    say(f"step {step}/{self.total} | loss {scalars['train/loss']:.4f} ({terms}) "
        f"| scale {scalars['train/scale']:.1f} | {scalars['examples_per_sec']:.0f} ex/s | ETA "
        f"{format_duration((self.total - step) / max(steps_per_s, 1e-9))}"
        + (f" | MFU {scalars['perf/mfu']:.1%}" if "perf/mfu" in scalars else "")
        + (f" | skipped {sum(skipped.values())} bad examples so far" if any(skipped.values())
           else "")
        + (f" | skipped {nonfinite} non-finite steps so far" if nonfinite else ""))
    return scalars

  def finished(self, start_step: int):
    say(f"Trained steps {start_step + 1}..{self.total} in "
        f"{format_duration(time.time() - self.t_start)}.")


def results_table(metrics: dict[str, float]) -> str:
  """Markdown table of evaluation metrics, grouped by evaluator."""
  lines = ["| metric | value |", "|---|---|"]
  for k in sorted(metrics):
    v = metrics[k]
    lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
  return "\n".join(lines)


def eval_line(step: int, metrics: dict[str, float]) -> str:
  return f"eval at step {step}: " + ", ".join(
      f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if not k.endswith("chance"))


def write_evaluation(writer, workdir: str, step: int, metrics: dict[str, float],
                     pictures: dict[str, np.ndarray]):
  """Evaluation scalars and pictures to the metric writer; the pictures also as PNG files (first
  process only)."""
  writer.write_scalars(step, dict(metrics))  # a copy: the writer is asynchronous
  if pictures:
    writer.write_images(step, {k: v[None] for k, v in pictures.items()})
    if jax.process_index() == 0:
      save_pictures(workdir, step, pictures)


def save_pictures(workdir: str, step: int, pictures: dict[str, np.ndarray]) -> list[str]:
  """Writes each evaluation picture as <workdir>/pictures/<evaluator>_<name>_<step>.png."""
  out_dir = epath.Path(workdir) / "pictures"
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  for key, picture in pictures.items():
    path = out_dir / f"{key.replace('/', '_')}_{step}.png"
    buf = io.BytesIO()
    Image.fromarray(np.asarray(picture, np.uint8)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    paths.append(str(path))
  return paths


def flat_hparams(config) -> dict[str, Any]:
  """The config flattened to scalar hparams ("loss.cross_weight": 0.0625) for TensorBoard."""
  out = {}

  def walk(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, (ml_collections.ConfigDict, dict)):
        walk(key + ".", v)
      elif isinstance(v, (bool, int, float, str)):
        out[key] = v
      else:
        out[key] = str(v)
  walk("", config)
  return out


class Profiler:
  """A jax.profiler trace of steps [first, last) into <workdir>/profile (first 0: none), by the
  first process."""

  def __init__(self, workdir: str, first: int, last: int):
    self.workdir = workdir
    self.first, self.last = int(first), max(int(last), int(first) + 1)
    self.enabled = self.first > 0 and jax.process_index() == 0
    self.active = False

  def step(self, step: int, fn):
    """fn() (one training step), annotated for the trace; starts and stops the trace around it."""
    if self.enabled and step == self.first:
      jax.profiler.start_trace(os.path.join(self.workdir, "profile"))
      self.active = True
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      out = fn()
    if self.active and step == self.last - 1:
      self.active = False
      jax.block_until_ready(out)
      jax.profiler.stop_trace()
      say(f"Profile of steps {self.first}..{step} written to {self.workdir}/profile.")
    return out
