"""Throughput of the embedded synthetic source (rankclip_jax.data.synthetic), one process.

  python -m benchmarks.synthetic_bench [--num 3000] [--sizes 32 64 96] [--max_objects 3]
  python -m benchmarks.synthetic_bench --pipeline [--config configs/rankclip_synthetic.py]
      [--threads 1 2 4] [--batches 30]

--pipeline times a config's whole training input pipeline instead (the Trainer's train_iterator:
render, crop, normalise, tokenise, batch) for each reader-thread count: wall time and this
process's CPU time per batch, the CPU time being what the pipeline takes from the training step
when both share the cores.
"""

from __future__ import annotations

import argparse
import time

from rankclip_jax.data import synthetic


def images_per_second(image_size: int, num: int, max_objects: int, caption_mode: str) -> float:
  source = synthetic.SyntheticScenes(num_records=num + 1, image_size=image_size,
                                     max_objects=max_objects, caption_mode=caption_mode)
  source[num]  # warm-up (builds the cached noise texture for this size)
  start = time.perf_counter()
  for i in range(num):
    source[i]
  return num / (time.perf_counter() - start)


def pipeline_per_batch(config_path: str, threads: int, batches: int) -> tuple[float, float]:
  """(wall ms, CPU ms) per batch of the config's training pipeline with `threads` reader threads."""
  # pylint: disable=g-import-not-at-top
  from benchmarks.step_profile import load_config
  from rankclip_jax import train
  config = load_config(config_path, [f"data.num_threads={threads}"])
  batches_of = train.Trainer(config).train_iterator()
  next(batches_of)  # warm-up: the reader threads started, the first batch rendered
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(batches):
    next(batches_of)
  return ((time.perf_counter() - wall) / batches * 1e3, (time.process_time() - cpu) / batches * 1e3)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=3000, help="examples per measurement")
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
  parser.add_argument("--max_objects", type=int, default=3)
  parser.add_argument("--caption_mode", default="random", choices=synthetic.CAPTION_MODES)
  parser.add_argument("--pipeline", action="store_true",
                      help="time the config's whole training input pipeline per thread count")
  parser.add_argument("--config", default="configs/rankclip_synthetic.py")
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument("--batches", type=int, default=30)
  args = parser.parse_args()
  if args.pipeline:
    for threads in args.threads:
      wall, cpu = pipeline_per_batch(args.config, threads, args.batches)
      print(f"{args.config}: {threads} reader thread(s): {wall:6.1f} ms/batch wall, "
            f"{cpu:6.1f} ms/batch CPU", flush=True)
    return
  for size in args.sizes:
    rate = images_per_second(size, args.num, args.max_objects, args.caption_mode)
    print(f"{size:4d} px  {rate:8.0f} images/s  ({1e6 / rate:6.0f} us/image, "
          f"1..{args.max_objects} objects, captions: {args.caption_mode})")


if __name__ == "__main__":
  main()
