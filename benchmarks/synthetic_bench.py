"""Throughput of the embedded synthetic source (rankclip_jax.data.synthetic), one process.

  python -m benchmarks.synthetic_bench [--num 3000] [--sizes 32 64 96] [--max_objects 3]
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=3000, help="examples per measurement")
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
  parser.add_argument("--max_objects", type=int, default=3)
  parser.add_argument("--caption_mode", default="random", choices=synthetic.CAPTION_MODES)
  args = parser.parse_args()
  for size in args.sizes:
    rate = images_per_second(size, args.num, args.max_objects, args.caption_mode)
    print(f"{size:4d} px  {rate:8.0f} images/s  ({1e6 / rate:6.0f} us/image, "
          f"1..{args.max_objects} objects, captions: {args.caption_mode})")


if __name__ == "__main__":
  main()
