"""Input-pipeline throughput on real files: decoded, cropped, tokenised examples per second.

Writes a small corpus the way img2dataset stores CC3M (JPEG photos of about 256 x 340 px, quality
90, with captions) both as webdataset tar shards and as JPEG files plus a CSV, then times the
training pipeline (rankclip_jax.data.pipeline.train_iterator: shuffle, read, JPEG decode, random
resized crop, normalise, tokenise, batch) for each worker count. Also times indexing the shards.

  python -m benchmarks.input_bench [--num 2048] [--workers 0 1 2 4] [--image_size 224]
      [--batch 64] [--batches 24] [--dir /tmp/input_bench]

Nothing is asserted: record the figures, with the machine, date and commit, in docs/performance.md,
"Input pipeline".
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tarfile
import time

import numpy as np
from absl import flags
from PIL import Image

from rankclip_jax.data import pipeline, synthetic
from rankclip_jax.data.csv_files import CsvSource
from rankclip_jax.data.tokenizer import ClipTokenizer
from rankclip_jax.data.webdataset import WebDatasetSource


def photo_like(rng: np.random.Generator, scene: np.ndarray, height: int, width: int) -> bytes:
  """A synthetic scene upscaled to a photo's size with grain noise, so the JPEG has a photo's
  entropy (and decode cost) rather than a flat cartoon's."""
  img = Image.fromarray(scene).resize((width, height), Image.BICUBIC)
  arr = np.asarray(img, np.int16) + rng.normal(0, 12, (height, width, 3)).astype(np.int16)
  buf = io.BytesIO()
  Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_corpus(directory: str, num: int, per_shard: int = 512) -> tuple[str, str]:
  """-> (tar brace pattern, CSV path). Reuses an existing corpus of the same size."""
  os.makedirs(os.path.join(directory, "images"), exist_ok=True)
  csv_path = os.path.join(directory, "train.csv")
  shards = (num + per_shard - 1) // per_shard
  pattern = os.path.join(directory, f"{{00000..{shards - 1:05d}}}.tar")
  if os.path.exists(csv_path) and sum(1 for _ in open(csv_path)) == num + 1:
    return pattern, csv_path
  rng = np.random.default_rng(0)
  scenes = synthetic.SyntheticScenes(num_records=num, image_size=96, caption_mode="full")
  rows = []
  tars = [tarfile.open(os.path.join(directory, f"{s:05d}.tar"), "w") for s in range(shards)]
  for i in range(num):
    ex = scenes[i]
    h, w = (256, 340) if i % 2 else (340, 256)
    data = photo_like(rng, ex["image"], h, w)
    key = f"{i:09d}"
    for name, payload in ((f"{key}.jpg", data), (f"{key}.txt", ex["caption"].encode())):
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tars[i // per_shard].addfile(info, io.BytesIO(payload))
    rel = f"images/{key}.jpg"
    with open(os.path.join(directory, rel), "wb") as f:
      f.write(data)
    rows.append((rel, ex["caption"]))
  for t in tars:
    t.close()
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
  return pattern, csv_path


def examples_per_second(source, *, workers: int, batch: int, batches: int, image_size: int,
                        threads: int) -> float:
  it = pipeline.train_iterator(source, per_process_batch_size=batch, seed=0,
                               tokenizer=ClipTokenizer(77), image_size=image_size,
                               worker_count=workers, num_threads=threads)
  for _ in range(max(2, workers)):  # start-up: worker processes spawn, buffers fill
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  rate = batches * batch / (time.perf_counter() - start)
  del it
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=2048, help="examples in the corpus")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4])
  parser.add_argument("--threads", type=int, default=4, help="reader threads per process")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=24, help="batches timed per measurement")
  parser.add_argument("--dir", default="/tmp/rankclip_input_bench")
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags

  t0 = time.perf_counter()
  pattern, csv_path = write_corpus(args.dir, args.num)
  print(f"corpus: {args.num} JPEGs (256x340 / 340x256, q90) in {args.dir} "
        f"({time.perf_counter() - t0:.1f} s to write or find); {os.cpu_count()} CPUs")
  t0 = time.perf_counter()
  tar_source = WebDatasetSource(pattern)
  t_index = time.perf_counter() - t0
  members = 2 * len(tar_source)
  print(f"tar index: {len(tar_source.shards)} shards, {members} members in {t_index * 1e3:.0f} ms "
        f"({t_index / members * 1e6:.1f} us/member)")
  csv_source = CsvSource(csv_path)
  print(f"\n| source | workers | examples/s | batch | image size |\n|---|---|---|---|---|")
  for name, source in (("webdataset tar", tar_source), ("csv + jpeg files", csv_source)):
    for w in args.workers:
      rate = examples_per_second(source, workers=w, batch=args.batch, batches=args.batches,
                                 image_size=args.image_size, threads=args.threads)
      print(f"| {name} | {w} | {rate:.0f} | {args.batch} | {args.image_size} |", flush=True)


if __name__ == "__main__":
  main()
