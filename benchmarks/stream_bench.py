"""The two tar-shard readers side by side: start-up, memory per process and examples/s per core.

`webdataset` (data/webdataset.py, WebDatasetSource + pipeline.train_iterator) reads every member's
header at start-up into an index; `webdataset_stream` (data/tar_stream.py, StreamSource +
stream_iterator) lists the shards and reads each from start to end. One run writes (or finds) a
corpus in img2dataset's layout (<key>.jpg + <key>.txt in tar shards), then measures, each in a
fresh process:

- start-up: from nothing to the first batch. Stream: listing the shards + the first batch (which
  fills the shuffle window); random access: the index of every header (with its default pool of
  spawned processes) + the first batch. Measured on all shards and on a tenth of them, and carried
  to CC3M's 6.6M members and to 100M: the random-access time linearly in the members (a fit through
  the two sizes), the stream's listing linearly in the shards plus its measured first batch.
- memory: peak RSS growth (VmHWM) of building the source and taking the first batches, then a
  pause in which prefetch buffers fill as they do behind a training step, then one more batch.
- steady state: examples/s after warm-up, with the CPU seconds the process and its grain workers
  used, so that examples/s per core holds on a machine shared with other jobs.

The default corpus is 1M members (500k examples) of small JPEGs: a few hundred distinct JPEGs are
encoded once and their bytes reused, so writing it is cheap, and the per-example cost is mostly the
reader's, not the decoder's. --photo makes the per-example cost CC3M's instead: input_bench's
photo-like 256x340 JPEGs (~32 KB), 224-px crops, on a smaller corpus (20k examples).

  python -m benchmarks.stream_bench [--members 1000000] [--shard_members 10000] [--image_size 32]
      [--batch 64] [--batches 60] [--workers 0] [--dir /tmp/rankclip_stream_bench]
  python -m benchmarks.stream_bench --photo    # --members 40000, --image_size 224, --batches 16

Nothing is asserted: record the figures, with the machine, date and commit, in docs/performance.md,
"Input pipeline".
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time

import numpy as np

from benchmarks.input_bench import photo_like

CC3M_MEMBERS = 6_600_000  # 3.3M examples, a .jpg and a .txt each
LARGE_MEMBERS = 100_000_000
DISTINCT_JPEGS = 256  # encoded once; members reuse their bytes
DISTINCT_CAPTIONS = 2048
CORPUS_VERSION = 1  # bump when the corpus written for the same flags changes


# ---------------------------------------------------------------------------------------------
# Corpus


def corpus_params(args) -> dict:
  return {"version": CORPUS_VERSION, "members": args.members, "shard_members": args.shard_members,
          "photo": bool(args.photo), "jpeg_px": None if args.photo else args.jpeg_px}


def corpus_dir(args) -> str:
  kind = "photo" if args.photo else f"px{args.jpeg_px}"
  return os.path.join(args.dir, f"{kind}-{args.members}m-{args.shard_members}s")


def shard_pattern(directory: str, shards: int) -> str:
  """The brace pattern of the first `shards` shards."""
  return os.path.join(directory, f"{{00000..{shards - 1:05d}}}.tar")


def _payloads(num_examples: int, photo: bool, jpeg_px: int) -> tuple[list[bytes], list[bytes]]:
  """(distinct JPEGs, distinct captions) of synthetic scenes; photo-sized (input_bench) if photo."""
  from rankclip_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  distinct = min(DISTINCT_JPEGS, num_examples)
  scenes = synthetic.SyntheticScenes(num_records=distinct, image_size=96, caption_mode="full")
  jpegs = []
  for j in range(distinct):
    h, w = ((256, 340) if j % 2 else (340, 256)) if photo else (jpeg_px, jpeg_px)
    jpegs.append(photo_like(rng, scenes[j]["image"], h, w))
  # Captions do not depend on the rendered size: small renders keep the pool cheap.
  texts = synthetic.SyntheticScenes(num_records=min(DISTINCT_CAPTIONS, num_examples), seed=1,
                                    image_size=16, caption_mode="random")
  captions = [texts[j]["caption"].encode() for j in range(len(texts))]
  return jpegs, captions


def _write_member(f, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  f.write(info.tobuf(tarfile.USTAR_FORMAT))
  f.write(payload)
  f.write(b"\0" * (-len(payload) % tarfile.BLOCKSIZE))


def ensure_corpus(args) -> dict:
  """The corpus for these flags: found under --dir (same parameters, every shard of the recorded
  size), or written. -> its manifest (params, shards, sizes, generation seconds)."""
  directory = corpus_dir(args)
  manifest_path = os.path.join(directory, "manifest.json")
  params = corpus_params(args)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
    paths = [os.path.join(directory, f"{s:05d}.tar") for s in range(manifest.get("shards", 0))]
    if (manifest.get("params") == params and paths
        and all(os.path.isfile(p) and os.path.getsize(p) == n
                for p, n in zip(paths, manifest["shard_bytes"]))):
      return dict(manifest, reused=True, dir=directory)
  os.makedirs(directory, exist_ok=True)
  t0 = time.perf_counter()
  examples = args.members // 2
  per_shard = args.shard_members // 2
  shards = -(-examples // per_shard)
  jpegs, captions = _payloads(examples, args.photo, args.jpeg_px)
  sizes = []
  for s in range(shards):
    path = os.path.join(directory, f"{s:05d}.tar")
    with open(path + ".part", "wb", buffering=1 << 20) as f:
      for i in range(s * per_shard, min((s + 1) * per_shard, examples)):
        key = f"{i:09d}"
        _write_member(f, f"{key}.jpg", jpegs[i % len(jpegs)])
        _write_member(f, f"{key}.txt", captions[(i * 7919) % len(captions)])
      f.write(b"\0" * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    os.replace(path + ".part", path)
    sizes.append(os.path.getsize(path))
  manifest = {"params": params, "shards": shards, "shard_bytes": sizes,
              "generation_s": time.perf_counter() - t0, "distinct_jpegs": len(jpegs),
              "distinct_captions": len(captions),
              "mean_jpeg_bytes": float(np.mean([len(j) for j in jpegs]))}
  with open(manifest_path + ".part", "w") as f:
    json.dump(manifest, f)
  os.replace(manifest_path + ".part", manifest_path)
  return dict(manifest, reused=False, dir=directory)


# ---------------------------------------------------------------------------------------------
# Measurements (each in a fresh process: `--_measure SPEC`)


def proc_status_kib(field: str) -> int:
  """A /proc/self/status field in KiB (VmHWM: peak RSS, VmRSS: RSS); ru_maxrss without /proc."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1])
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _descendants(pid: int) -> list[int]:
  parents = {}
  for name in os.listdir("/proc"):
    if name.isdigit():
      try:
        with open(f"/proc/{name}/stat") as f:
          parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
  out, frontier = [], [pid]
  while frontier:
    kids = [c for c, p in parents.items() if p in frontier]
    out.extend(kids)
    frontier = kids
  return out


def cpu_seconds() -> float:
  """CPU seconds of this process (all threads) and its live descendants (grain workers)."""
  total = time.process_time()
  if not os.path.isdir("/proc"):
    return total
  tick = os.sysconf("SC_CLK_TCK")
  for pid in _descendants(os.getpid()):
    try:
      with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, IndexError, ValueError):
      continue
  return total


def _build(kind: str, pattern: str):
  from rankclip_jax.data import tar_stream, webdataset  # pylint: disable=import-outside-toplevel
  if kind == "stream":
    return tar_stream.StreamSource(pattern, image_exts=("jpg",), caption_exts=("txt",))
  return webdataset.WebDatasetSource(pattern)


def _iterator(kind: str, source, spec: dict, tokenizer):
  from rankclip_jax.data import pipeline, tar_stream  # pylint: disable=import-outside-toplevel
  make = tar_stream.stream_iterator if kind == "stream" else pipeline.train_iterator
  return make(source, per_process_batch_size=spec["batch"], seed=0, tokenizer=tokenizer,
              image_size=spec["image_size"], worker_count=spec["workers"])


def _throughput(it, spec: dict) -> dict:
  for _ in range(spec["warmup"]):
    next(it)
  cpu0, t0 = cpu_seconds(), time.perf_counter()
  for _ in range(spec["batches"]):
    next(it)
  wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
  n = spec["batches"] * spec["batch"]
  return {"timed_examples": n, "wall_s": wall, "cpu_s": cpu, "rate": n / wall, "per_core": n / cpu}


def measure(spec: dict) -> dict:
  """One fresh process's measurement: start-up and memory (spec["startup"]), then throughput
  (spec["throughput"]) on the same iterator."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from rankclip_jax.data.tokenizer import ClipTokenizer  # pylint: disable=import-outside-toplevel
  import rankclip_jax.data.tar_stream  # pylint: disable=import-outside-toplevel,unused-import
  import rankclip_jax.data.pipeline  # pylint: disable=import-outside-toplevel,unused-import
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags
  tokenizer = ClipTokenizer(77)
  kind = spec["kind"]
  out = {"hwm0_kib": proc_status_kib("VmHWM")}
  t0 = time.perf_counter()
  source = _build(kind, spec["pattern"])
  out["source_s"] = time.perf_counter() - t0
  it = _iterator(kind, source, spec, tokenizer)
  next(it)
  out["startup_s"] = time.perf_counter() - t0
  out["first_batch_s"] = out["startup_s"] - out["source_s"]
  if spec["startup"]:
    for _ in range(spec["mem_batches"]):
      next(it)
    time.sleep(spec["pause"])
    next(it)
    out["hwm1_kib"] = proc_status_kib("VmHWM")
    out["children_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if kind == "random":
      out["index_bytes"] = int(source.index.nbytes)
      out["examples"] = len(source)
    out["shards"] = (len(source.shards) if kind == "random"
                     else sum(len(c.shards) for c in source.corpora))
    first = source.shards[0] if kind == "random" else source.corpora[0].shards[0]
    out["shard_path_len"] = len(first)
  if spec["throughput"]:
    out.update(_throughput(it, spec))
  if hasattr(it, "close"):
    it.close()
  return out


def run_measurement(spec: dict) -> dict:
  proc = subprocess.run([sys.executable, "-m", "benchmarks.stream_bench", "--_measure",
                         json.dumps(spec)], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise SystemExit(f"measurement {spec} failed (exit {proc.returncode}):\n"
                     f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------------
# Report


def machine() -> str:
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
  except OSError:
    pass
  versions = []
  for pkg in ("jax", "grain", "pillow"):
    try:
      versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
    except importlib.metadata.PackageNotFoundError:
      pass
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
  return (f"machine: {platform.machine()} {cpu or '?'}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {', '.join(versions)}; load average {load}")


def mib(kib: float) -> str:
  return f"{kib / 1024:.0f}"


def fmt_members(n: float) -> str:
  return f"{n / 1e6:g}M" if n >= 1e6 else f"{n:,.0f}"


def linear(x1: float, y1: float, x2: float, y2: float, x: float) -> float | None:
  """y at x on the line through (x1, y1) and (x2, y2); None when x1 == x2."""
  if x1 == x2:
    return None
  return y1 + (y2 - y1) / (x2 - x1) * (x - x1)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--members", type=int, default=None,
                      help="tar members (2 an example); default 1,000,000 (--photo: 40,000)")
  parser.add_argument("--shard_members", type=int, default=10_000, help="members per shard")
  parser.add_argument("--dir", default="/tmp/rankclip_stream_bench", help="corpora are cached here")
  parser.add_argument("--image_size", type=int, default=None,
                      help="crop size; default 32 (--photo: 224)")
  parser.add_argument("--jpeg_px", type=int, default=40, help="side of the small JPEGs")
  parser.add_argument("--photo", action="store_true",
                      help="photo-like 256x340 JPEGs (input_bench's): CC3M's per-example cost")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--batches", type=int, default=None,
                      help="batches timed per throughput measurement; default 60 (--photo: 16)")
  parser.add_argument("--workers", type=int, nargs="+", default=[0],
                      help="grain worker processes for the throughput table")
  parser.add_argument("--mem_batches", type=int, default=8,
                      help="batches taken after the first before memory is read")
  parser.add_argument("--pause", type=float, default=2.0,
                      help="seconds without taking a batch before the last one (buffers fill)")
  parser.add_argument("--_measure", dest="measure_spec", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure_spec is not None:  # a child process of the run: one measurement
    print("RESULT " + json.dumps(measure(json.loads(args.measure_spec))), flush=True)
    return
  args.members = args.members or (40_000 if args.photo else 1_000_000)
  args.image_size = args.image_size or (224 if args.photo else 32)
  args.batches = args.batches or (16 if args.photo else 60)
  if args.members < 2 or args.shard_members < 2:
    parser.error("--members and --shard_members must be at least 2 (a .jpg and a .txt an example)")

  print(machine(), flush=True)
  corpus = ensure_corpus(args)
  shards, directory = corpus["shards"], corpus["dir"]
  examples = args.members // 2
  members = 2 * examples
  per_shard = 2 * (args.shard_members // 2)
  jpeg = ("photo-like 256x340 / 340x256 q90 JPEGs (input_bench.photo_like)" if args.photo
          else f"{args.jpeg_px}x{args.jpeg_px} q90 JPEGs")
  disk = sum(corpus["shard_bytes"]) / 2**30
  how = ("found, written by an earlier run in" if corpus["reused"] else "generated in")
  print(f"corpus: {members:,} members = {examples:,} examples ({jpeg}, mean "
        f"{corpus['mean_jpeg_bytes'] / 1024:.1f} KiB; {corpus['distinct_jpegs']} distinct JPEGs "
        f"and {corpus['distinct_captions']} distinct captions reused) in {shards} shards of "
        f"{per_shard:,} members, {disk:.2f} GiB, {directory}")
  print(f"corpus generation: {how} {corpus['generation_s']:.1f} s", flush=True)
  from rankclip_jax.data import tar_stream  # pylint: disable=import-outside-toplevel
  pool = min(os.cpu_count() or 1, 32)
  print(f"settings: batch {args.batch}, crop {args.image_size} px, seed 0; stream: cycle_length "
        f"{tar_stream.DEFAULT_CYCLE_LENGTH}, shuffle_window {tar_stream.DEFAULT_SHUFFLE_WINDOW}, "
        f"prefetch 8 batches; random access: 4 reader threads, prefetch 8 examples, index pool of "
        f"{pool} spawned processes when there are 8 shards or more", flush=True)

  sub = max(1, shards // 10)
  sizes = [(shards, members)]
  if sub < shards:
    sizes.append((sub, min(sub * per_shard, members)))
  base = {"batch": args.batch, "image_size": args.image_size, "workers": 0,
          "batches": args.batches, "warmup": 3, "mem_batches": args.mem_batches,
          "pause": args.pause}
  results = {}  # (kind, shards) -> startup/memory measurement (+ throughput on all shards)
  for kind in ("stream", "random"):
    for n_shards, _ in sizes:
      spec = dict(base, kind=kind, pattern=shard_pattern(directory, n_shards), startup=True,
                  throughput=(n_shards == shards and 0 in args.workers))
      results[(kind, n_shards)] = run_measurement(spec)
  rates = {}  # (kind, workers) -> throughput
  for kind in ("stream", "random"):
    for w in args.workers:
      if w == 0:
        rates[(kind, 0)] = results[(kind, shards)]
      else:
        spec = dict(base, kind=kind, pattern=shard_pattern(directory, shards), workers=w,
                    startup=False, throughput=True, warmup=max(3, 3 * w))
        rates[(kind, w)] = run_measurement(spec)

  names = {"stream": "stream (webdataset_stream)", "random": "random access (webdataset)"}
  targets = [("CC3M", CC3M_MEMBERS), ("100M", LARGE_MEMBERS)]

  print("\n## Start-up: a fresh process, from nothing to the first batch (seconds)\n")
  print("| kind | shards | members | list / index | first batch | start-up | how |")
  print("|---|---|---|---|---|---|---|")
  for kind in ("stream", "random"):
    for n_shards, n_members in sizes:
      r = results[(kind, n_shards)]
      print(f"| {names[kind]} | {n_shards} | {n_members:,} | {r['source_s']:.2f} | "
            f"{r['first_batch_s']:.2f} | {r['startup_s']:.2f} | measured |")
  full = {k: results[(k, shards)] for k in ("stream", "random")}
  small = {k: results[(k, sizes[-1][0])] for k in ("stream", "random")}
  for label, target in targets:
    t_shards = -(-target // per_shard)
    listing = full["stream"]["source_s"] * t_shards / shards
    print(f"| {names['stream']} | {t_shards:,} | {fmt_members(target)} ({label}) | {listing:.2f} | "
          f"{full['stream']['first_batch_s']:.2f} | {listing + full['stream']['first_batch_s']:.2f}"
          f" | extrapolated: listing scaled by the shards (an upper bound), first batch as "
          f"measured |")
    index = linear(sizes[-1][1], small["random"]["source_s"], members, full["random"]["source_s"],
                   target)
    if index is None:
      print(f"| {names['random']} | {t_shards:,} | {fmt_members(target)} ({label}) | n/a | n/a | "
            f"n/a | one corpus size only (1 shard): no fit |")
    else:
      print(f"| {names['random']} | {t_shards:,} | {fmt_members(target)} ({label}) | {index:.0f} "
            f"| {full['random']['first_batch_s']:.2f} | "
            f"{index + full['random']['first_batch_s']:.0f} | extrapolated: index linear in "
            f"members through the two measured sizes, {pool} index processes |")
  if len(sizes) > 1:
    slope = ((full["random"]["source_s"] - small["random"]["source_s"])
             / (members - sizes[-1][1]))
    print(f"\nrandom-access index: {slope * 1e6:.1f} us per member on this machine's {pool} index "
          f"processes (the fit's slope); the stream's start-up at {shards} vs {sizes[-1][0]} "
          f"shards: {full['stream']['startup_s']:.2f} vs {small['stream']['startup_s']:.2f} s.")

  print("\n## Memory per process: peak RSS (VmHWM, MiB), a fresh process each\n")
  print(f"Read after building the source, the first {args.mem_batches + 1} batches, a "
        f"{args.pause:g} s pause (prefetch buffers fill) and one more batch; 'before' is after "
        "the imports and the tokenizer.\n")
  print("| kind | shards | members | before | after | growth | index array | index pool "
        "worker peak | how |")
  print("|---|---|---|---|---|---|---|---|---|")
  for kind in ("stream", "random"):
    for n_shards, n_members in sizes:
      r = results[(kind, n_shards)]
      growth = r["hwm1_kib"] - r["hwm0_kib"]
      index = f"{r['index_bytes'] / 2**20:.1f}" if kind == "random" else "none"
      pool_peak = (mib(r["children_kib"]) if kind == "random" and r["children_kib"] else "-")
      print(f"| {names[kind]} | {n_shards} | {n_members:,} | {mib(r['hwm0_kib'])} | "
            f"{mib(r['hwm1_kib'])} | {mib(growth)} | {index} | {pool_peak} | measured |")
  growth = {k: (full[k]["hwm1_kib"] - full[k]["hwm0_kib"]) for k in full}
  small_growth = {k: (small[k]["hwm1_kib"] - small[k]["hwm0_kib"]) for k in small}
  row_bytes = full["random"]["index_bytes"] / full["random"]["examples"]
  for label, target in targets:
    t_shards = -(-target // per_shard)
    list_kib = t_shards * (full["stream"]["shard_path_len"] + 60) / 1024
    stream_kib = max(growth["stream"], small_growth["stream"]) + list_kib
    print(f"| {names['stream']} | {t_shards:,} | {fmt_members(target)} ({label}) | | | "
          f"{mib(stream_kib)} | none | - | extrapolated: larger measured growth + the shard "
          f"list (~{list_kib / 1024:.1f} MiB) |")
    fit = linear(sizes[-1][1], small_growth["random"], members, growth["random"], target)
    index_mib = row_bytes * target / 2 / 2**20
    fit_text = ("n/a" if fit is None or growth["random"] <= small_growth["random"]
                else mib(fit))  # n/a: one size only, or the sizes differ by less than the noise
    print(f"| {names['random']} | {t_shards:,} | {fmt_members(target)} ({label}) | | | "
          f"{fit_text} | {index_mib:,.0f} | | extrapolated: growth linear through the two "
          f"measured sizes; index {row_bytes:.0f} bytes an example |")
  print("\n(each grain worker process of the random-access kind holds its own copy of the index)")

  print("\n## Steady state: examples/s after warm-up, and per core (CPU seconds of the process "
        "and its grain workers)\n")
  print(f"{args.batches} batches of {args.batch} timed after {base['warmup']} (workers: 3 per "
        f"worker) warm-up batches; crop {args.image_size} px; all {shards} shards.\n")
  print("| kind | workers | examples/s | cores busy | examples/s per core | stream / random "
        "access (per core) |")
  print("|---|---|---|---|---|---|")
  for w in args.workers:
    for kind in ("stream", "random"):
      r = rates[(kind, w)]
      ratio = (f"{rates[('stream', w)]['per_core'] / rates[('random', w)]['per_core']:.2f}"
               if kind == "random" else "")
      print(f"| {names[kind]} | {w} | {r['rate']:.0f} | {r['cpu_s'] / r['wall_s']:.2f} | "
            f"{r['per_core']:.0f} | {ratio} |")
  print(flush=True)


if __name__ == "__main__":
  main()
