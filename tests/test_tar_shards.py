"""Damaged and hostile tar shards (rankclip_jax/data/tar_headers.py, data/webdataset.py): header
fields that would loop or overflow, oversized members, shards cut short or not tar files at all,
and a seeded fuzz of real shards. Whatever could hang or grow without end runs in a subprocess
with a timeout and an address-space limit, so that a regression fails rather than hangs."""

import json
import logging
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from rankclip_jax.data import webdataset as wds
from rankclip_jax.data.records import SKIP_KINDS
from rankclip_jax.data.webdataset import ShardError, WebDatasetSource

import data_fixtures as F

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
MEMORY_LIMIT = 2 << 30  # address space of the bounded subprocesses: far above a scan's needs


def run_bounded(code: str, timeout: float = 60) -> str:
  """Runs Python `code` (with tests/ importable) in a subprocess limited in time and memory;
  returns its stdout, failing the test on a timeout or a non-zero exit."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPO]), OPENBLAS_NUM_THREADS="1")
  # The limit is set by the child itself: a preexec_fn would fork this multithreaded process.
  limit = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, "
           f"{MEMORY_LIMIT}))\n")
  try:
    proc = subprocess.run([sys.executable, "-c", limit + code], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    pytest.fail(f"timed out after {timeout} s (a walk that never ends?)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


# Scans each path given and prints [members, damage kind or None, damage offset] per path; an
# exception is printed in place of the damage kind, so that the failing assertion shows it.
_SCAN = """
import json
from rankclip_jax.data.webdataset import scan_tar
out = []
for path in PATHS:
  try:
    members, problem = scan_tar(path)
    out.append([members, getattr(problem, "kind", problem), getattr(problem, "offset", None)])
  except Exception as e:
    out.append([[], f"raised {type(e).__name__}: {e}", None])
print(json.dumps(out))
"""


def scan_bounded(paths, timeout=60):
  code = _SCAN.replace("PATHS", repr([str(p) for p in paths]))
  return [(m, kind, offset) for m, kind, offset in json.loads(run_bounded(code, timeout))]


def _members(n, seed=0, size=(0, 1500)):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    for ext in ("jpg", "txt"):
      out.append((f"{i:05d}.{ext}", rng.integers(0, 256, rng.integers(*size), np.uint8).tobytes()))
  return out


def _expected(data, before):
  """tarfile's regular members whose own header starts before byte `before`, as scan_tar's
  [name, offset, size]."""
  return [[m.name, m.offset_data, m.size] for m in F.tar_layout(data)
          if m.isreg() and m.offset_data - 512 < before]


# ----------------------------------------------------------------- header fields (finding 5)

def test_negative_and_malformed_sizes_and_pax_records_are_damage_at_their_header(tmp_path):
  """A negative size used to point the next header back at the same one (a walk that never ended,
  its memory growing); a pax record of length 0 looped forever; a non-numeric pax length raised a
  ValueError naming no shard. Each is now corrupt_header at that header's byte offset, after the
  members before it."""
  data = F.tar_bytes(_members(3))
  layout = F.tar_layout(data)
  h = layout[2].offset  # the third member's header
  cases = {
      "octal_negative": F.with_header_field(data, h, 124, 136, b"-0001000"),
      "base256_negative": F.with_header_field(data, h, 124, 136, b"\xff" * 10 + b"\xfe\x00"),
      "not_a_number": F.with_header_field(data, h, 124, 136, b"00001 2x4"),
      "bad_checksum": data[:h + 5] + b"!" + data[h + 6:],
  }
  pax = F.tar_bytes([("d" * 120 + "/" + n, d) for n, d in _members(3)], tarfile.PAX_FORMAT)
  ph = F.tar_layout(pax)[2].offset  # its pax header; its data: one '<length> path=...' record
  digits = pax.index(b" ", ph + 512) - (ph + 512)
  length = int(pax[ph + 512:ph + 512 + digits])
  end = ph + 512 + length  # just past the record's newline
  pax_cases = {
      "pax_length_0": b"0" * digits,
      "pax_length_not_a_number": b"x" * digits,
      "pax_length_past_the_data": b"9" * digits,
  }
  for name, value in pax_cases.items():
    cases[name] = pax[:ph + 512] + value + pax[ph + 512 + digits:]
  cases["pax_without_newline"] = pax[:end - 1] + b" " + pax[end:]
  cases["pax_without_equals"] = (pax[:ph + 512 + digits] + b" path:" +
                                 pax[ph + 512 + digits + 6:])
  paths = []
  for name, payload in cases.items():
    paths.append(tmp_path / f"{name}.tar")
    paths[-1].write_bytes(payload)
  results = scan_bounded(paths, timeout=60)
  for name, (members, kind, offset) in zip(cases, results):
    # (tarfile itself would loop on the mutated shards: the expected members are the unmutated's.)
    original, header = (pax, ph) if name.startswith("pax") else (data, h)
    assert (kind, offset) == ("corrupt_header", header), name
    assert members == _expected(original, header), name


# --------------------------------------------------------------- oversized members (finding 6)

def _sparse_tar(path, members):
  """A GNU tar of [(name, size, data or None)]: None leaves the data a hole (a sparse file), so a
  member of gigabytes costs nothing to write."""
  with open(path, "wb") as f:
    for name, size, payload in members:
      info = tarfile.TarInfo(name)
      info.size, info.mtime = size, 0
      f.write(info.tobuf(tarfile.GNU_FORMAT))
      if payload is None:
        f.seek(size, os.SEEK_CUR)
      else:
        f.write(payload)
      f.seek(-size % 512, os.SEEK_CUR)
    f.write(b"\0" * 1024)


def test_oversized_members_are_capped_at_indexing_and_never_read_whole(tmp_path, monkeypatch):
  """An image member over the cap is skipped (unreadable_image) and never read; a caption member
  over the cap is read only up to it (and one over 2 GiB no longer overflows the index); a good
  example beside them reads as before."""
  jpeg = F.encode(F.scenes(1)[0][0], "JPEG")
  huge_caption = 3 << 30
  path = str(tmp_path / "big.tar")
  _sparse_tar(path, [
      ("0.jpg", wds.MAX_IMAGE_BYTES + 1, None), ("0.txt", 5, b"huge!"),  # image over the cap
      ("1.jpg", len(jpeg), jpeg), ("1.txt", huge_caption, None),  # caption of 3 GiB
      ("2.jpg", len(jpeg), jpeg), ("2.txt", 100_000, b"a" * 100_000),  # over the caption cap
      ("3.jpg", len(jpeg), jpeg), ("3.txt", 7, b"a photo"),
  ])
  reads = []
  real_pread = os.pread
  monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(n) or real_pread(fd, n, off))
  src = WebDatasetSource(path)
  got = {r["where"].rsplit(":", 1)[1]: r for r in (src[i] for i in range(len(src)))}
  assert got["0"] == {"__skipped__": "unreadable_image", "where": f"{path}:0"}
  assert len(got["1"]["caption"]) == wds.MAX_CAPTION_BYTES and got["1"]["image_bytes"] == jpeg
  assert got["2"]["caption"] == "a" * wds.MAX_CAPTION_BYTES
  assert got["3"] == {"image_bytes": jpeg, "caption": "a photo", "where": f"{path}:3"}
  assert max(reads) == wds.MAX_CAPTION_BYTES  # nothing larger was ever read


# ----------------------------------------------------- truncation and unreadable shards (7, 8)

def test_a_shard_cut_at_a_header_boundary_is_counted_and_named(tmp_path, caplog):
  """Cut exactly where a header starts, a shard used to look whole and lose its later members
  without a word; the missing end-of-archive marker now says it was cut. One zero block of the
  two is enough (as for GNU tar)."""
  data = F.tar_bytes(_members(4))
  layout = F.tar_layout(data)
  end = F.end_marker(data)
  for cut, damaged in ((layout[4].offset, True), (end, True), (end + 300, True),
                       (end + 512, False), (len(data), False)):
    path = tmp_path / f"cut{cut}.tar"
    path.write_bytes(data[:cut])
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      src = WebDatasetSource(str(path), caption_exts=("txt",), max_unreadable_shard_fraction=0)
    records = [src[i] for i in range(len(src))]
    good = [r["where"].rsplit(":", 1)[1] for r in records if "image_bytes" in r]
    assert good == [f"{i:05d}" for i in range(2 if cut == layout[4].offset else 4)], cut
    markers = [r for r in records if "__skipped__" in r]
    if damaged:
      assert [m["__skipped__"] for m in markers] == ["broken_member"], cut
      assert "cut short" in markers[0]["where"]
      named = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
      assert len(named) == 1 and "is cut short" in named[0], caplog.text
      assert src.shard_damage == {"truncated": 1}
    else:
      assert not markers and not src.shard_damage and not caplog.records, cut


def test_unreadable_shards_are_skipped_until_their_share_passes_the_threshold(tmp_path, caplog):
  """A shard that is not a tar (garbage, empty) or is damaged before its first member used to stop
  the run at start-up ("is not a tar file"). Now each is one broken_member per epoch and named
  once; only more than max_unreadable_shard_fraction of them (or all) stops the start, with one
  line."""
  fx = F.write_tar_shards(str(tmp_path / "good"), num_good=16, num_shards=8)
  paths = sorted(str(tmp_path / "good" / n) for n in os.listdir(tmp_path / "good"))
  bad = {"garbage": b"<html>rate limited</html>\n" * 40, "empty": b"",
         "first_member_cut": open(paths[0], "rb").read()[:700]}
  for name, payload in bad.items():
    (tmp_path / f"{name}.tar").write_bytes(payload)
    paths.append(str(tmp_path / f"{name}.tar"))
  with caplog.at_level(logging.WARNING):
    src = WebDatasetSource(paths, max_unreadable_shard_fraction=0.3, index_processes=1,
                           field="config.data.train.path")
  assert src.shard_damage == {"not_a_tar": 2, "truncated": 1}
  for name in bad:
    named = [r.getMessage() for r in caplog.records if f"{name}.tar" in r.getMessage()]
    assert len(named) == 1, (name, caplog.text)
  assert "garbage.tar is not a tar file" in caplog.text
  records = [src[i] for i in range(len(src))]
  markers = [r["where"] for r in records if r.get("__skipped__") == "broken_member"]
  assert sorted(m.split(":", 1)[0] for m in markers) == sorted(paths[-3:])
  keys = {r["where"].rsplit(":", 1)[1] for r in records if "image_bytes" in r}
  assert set(fx["good"]) <= keys  # every good example of the good shards is there
  assert "3 damaged" in repr(src)
  # 3 of 11 shards (27%) is over a share of 0.25: one line naming the first and the knob.
  with pytest.raises(ShardError) as e:
    WebDatasetSource(paths, max_unreadable_shard_fraction=0.25, index_processes=1,
                     field="config.data.train.path")
  message = str(e.value)
  assert "\n" not in message and "3 of 11 tar shard(s) cannot be read" in message
  assert "config.data.train.max_unreadable_shard_fraction" in message
  assert f"{paths[8]} is not a tar file" in message
  # All of them unreadable: an error whatever the share allowed.
  with pytest.raises(ShardError, match="1 of 1 tar shard"):
    WebDatasetSource(paths[-3], max_unreadable_shard_fraction=1.0)
  # A file that cannot be opened or read (here a FIFO, whose opening used to block forever) is
  # damage of its own kind, never an error or a wait.
  os.mkfifo(tmp_path / "fifo.tar")
  assert scan_bounded([tmp_path / "fifo.tar"], timeout=30) == [([], "cannot_open", 0)]


def test_max_unreadable_shard_fraction_is_validated():
  from rankclip_jax import config_validation
  from test_train import micro_config
  for value in (-0.1, 1.5):
    c = micro_config(**{"data.train.kind": "webdataset", "data.train.path": "/x/{0..1}.tar",
                        "data.train.max_unreadable_shard_fraction": value})
    with pytest.raises(config_validation.ConfigError, match="max_unreadable_shard_fraction"):
      config_validation.validate_config(c, num_devices=8, process_count=1)


# ----------------------------------------------------------------------------- fuzz (finding 9)

_BASES = {  # format, and whether names are long (GNU long names, ustar prefixes, pax paths)
    "ustar": (tarfile.USTAR_FORMAT, "u" * 110 + "/"),
    "gnu": (tarfile.GNU_FORMAT, "g" * 120 + "/"),
    "pax": (tarfile.PAX_FORMAT, "p" * 80 + "/caf\u00e9" + "q" * 90 + "/"),
}
_SIZE_VALUES = {  # (field bytes, expected: kind of the damage at that header, or None: any)
    "octal_negative": (b"-0001000", "corrupt_header"),
    "base256_negative": (b"\xff" * 11 + b"\x00", "corrupt_header"),
    "base256_huge": (b"\x80" + b"\xff" * 11, "truncated"),
    "octal_huge": (b"77777777777", "truncated"),
    "not_octal": (b"00000009", "corrupt_header"),
    "signed": (b"+0001000", "corrupt_header"),
    "underscore": (b"0_1000", "corrupt_header"),
    "octal_small": (None, None),  # a random size within the file: anything may follow
}
_TYPES = b"0123456789LxgKSAVMNDZ\0\xff"


def _base_shards(rng):
  bases = {}
  for name, (fmt, long_dir) in _BASES.items():
    members = []
    for i in range(5):
      stem = (long_dir if i % 2 else "") + f"{i:05d}"
      for ext in ("jpg", "txt"):
        size = int(rng.choice([0, 1, 511, 512, 513, int(rng.integers(0, 2000))]))
        members.append((f"{stem}.{ext}", rng.integers(0, 256, size, np.uint8).tobytes()))
    data = F.tar_bytes(members, fmt)
    headers = sorted({h for m in F.tar_layout(data) for h in (m.offset, m.offset_data - 512)})
    bases[name] = (data, headers)
  return bases


def _mutate(rng, data, headers):
  """One random mutation -> (description, mutated bytes, expected), expected one of
  ("damage", kind, header offset): exactly the members before that header, then that damage;
  ("cut", p): the members whose data ends by byte p, damage iff p is before the end marker's end;
  ("same",): exactly the unmutated members, no damage;
  ("any", header offset): the members before it, then anything within the file."""
  what = rng.choice(["size", "size", "type", "checksum", "pax", "cut", "cut_boundary", "data"])
  end = F.end_marker(data)
  h = int(rng.choice(headers))
  if what == "size":
    name = str(rng.choice(list(_SIZE_VALUES)))
    value, kind = _SIZE_VALUES[name]
    if value is None:
      value = b"%011o" % int(rng.integers(0, len(data)))
    return f"size {name} at {h}", F.with_header_field(data, h, 124, 136, value), (
        ("damage", kind, h) if kind else ("any", h))
  if what == "type":
    flag = _TYPES[int(rng.integers(len(_TYPES)))]
    return f"type {flag!r} at {h}", F.with_header_field(data, h, 156, 157, bytes([flag])), (
        "any", h)
  if what == "checksum":  # a byte of a header (or of the end marker) changed, checksum not fixed
    h = int(rng.choice(headers + [end]))
    kind = "not_a_tar" if h == 0 else "corrupt_header"
    if rng.random() < 0.2 and h != end:  # another (valid) number in the checksum field
      stored = int(data[h + 148:h + 154], 8)
      value = b"%06o\0 " % ((stored + int(rng.integers(1, 8 ** 6))) % 8 ** 6)
      return f"checksum of {h}", F.with_header_field(data, h, 148, 156, value, False), (
          "damage", kind, h)
    pos = h + int(rng.choice([i for i in range(512) if not 148 <= i < 156]))
    byte = (data[pos] + int(rng.integers(1, 256))) % 256
    return f"byte {pos} of header {h}", data[:pos] + bytes([byte]) + data[pos + 1:], (
        "damage", kind, h)
  if what == "pax":
    pax = [m.offset for m in F.tar_layout(data) if m.offset != m.offset_data - 512 and
           data[m.offset + 156:m.offset + 157] == b"x"]
    if not pax:
      return _mutate(rng, data, headers)
    h = int(rng.choice(pax))
    start = h + 512
    digits = data.index(b" ", start) - start
    length = int(data[start:start + digits])
    variants = {"length 0": b"0" * digits, "length x": b"x" * digits,
                "length past the data": b"9" * digits}
    if len(str(length - 1)) == digits:
      variants["length short by one"] = str(length - 1).encode()
    name = str(rng.choice(list(variants) + ["no =", "no newline"]))
    if name == "no =":
      eq = data.index(b"=", start)
      mutated = data[:eq] + b":" + data[eq + 1:]
    elif name == "no newline":
      mutated = data[:start + length - 1] + b" " + data[start + length:]
    else:
      mutated = data[:start] + variants[name] + data[start + digits:]
    return f"pax {name} at {h}", mutated, ("damage", "corrupt_header", h)
  if what == "cut":
    p = int(rng.integers(0, len(data)))
    return f"cut at {p}", data[:p], ("cut", p)
  if what == "cut_boundary":
    p = int(rng.choice(headers + [end, end + 512, end + 1024])) + int(rng.choice([0, 0, -1, 1]))
    p = min(max(p, 0), len(data))
    return f"cut at {p} (a header boundary)", data[:p], ("cut", p)
  # Random bytes in member data: data is never parsed, so nothing changes.
  regular = [m for m in F.tar_layout(data) if m.isreg() and m.size]
  m = regular[int(rng.integers(len(regular)))]
  pos = m.offset_data + int(rng.integers(m.size))
  return f"data byte {pos}", data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:], ("same",)


class _CaseTimeout(Exception):
  pass


def _on_alarm(signum, frame):
  raise _CaseTimeout()


def fuzz(directory: str, seed: int = 0, cases: int = 400, per_case_seconds: float = 2.0) -> dict:
  """Runs `cases` seeded mutations of real shards through scan_tar and index_shard, checking each
  against what tarfile reads from the unmutated shard; an AssertionError names the failing case.
  Run by test_fuzzed_shards_give_the_members_before_the_damage in a bounded subprocess."""
  rng = np.random.default_rng(seed)
  bases = _base_shards(rng)
  signal.signal(signal.SIGALRM, _on_alarm)
  exts = (("jpg",), ("txt",))
  seen = {}
  for case in range(cases):
    base = str(rng.choice(list(bases)))
    data, headers = bases[base]
    what, mutated, expected = _mutate(rng, data, headers)
    label = f"case {case} (seed {seed}): {base} shard, {what}"
    path = os.path.join(directory, f"{case}.tar")
    with open(path, "wb") as f:
      f.write(mutated)
    signal.setitimer(signal.ITIMER_REAL, per_case_seconds)
    try:
      members, damage = wds.scan_tar(path)
      index = wds.index_shard(0, path, *exts)
    except _CaseTimeout:
      raise AssertionError(f"{label}: took more than {per_case_seconds} s") from None
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
    members = [list(m) for m in members]
    for name, offset, size in members:  # every member's bytes lie inside the file
      assert 512 <= offset and 0 <= size and offset + size <= len(mutated), (label, name)
    got = (damage.kind, damage.offset) if damage else None
    if expected[0] == "same":
      want, want_damage = _expected(data, len(data)), None
    elif expected[0] == "cut":
      p = expected[1]
      want = [m for m in _expected(data, len(data)) if m[1] + m[2] <= p]
      want_damage = "any" if p < F.end_marker(data) + 512 else None
    elif expected[0] == "damage":
      want, want_damage = _expected(data, expected[2]), (expected[1], expected[2])
    else:  # "any": a mutation the format cannot tell from a real archive
      want, want_damage = _expected(data, expected[1]), "skip"
    assert members[:len(want)] == want, (label, members, want)
    assert want_damage == "skip" or len(members) == len(want), (label, members, want)
    if want_damage == "any":
      assert damage is not None and damage.kind in ("truncated", "not_a_tar"), (label, got)
    elif want_damage != "skip":
      assert got == want_damage, (label, got)
    assert index.damage == damage and index.members == len(members), label
    if want_damage not in ("skip", None):
      # The examples of the members before the damage, then one broken_member for the rest.
      rows = wds.example_rows(0, [tuple(m) for m in want], *exts)
      expected_rows = np.array(rows + [(0, 1 + SKIP_KINDS.index("broken_member"), 0, 0, 0, 0, 0,
                                        0, damage.short.encode())], wds.INDEX_DTYPE)
      np.testing.assert_array_equal(index.rows, expected_rows, err_msg=label)
    seen[expected[0]] = seen.get(expected[0], 0) + 1
    os.remove(path)
  return seen


def test_fuzzed_shards_give_the_members_before_the_damage(tmp_path):
  """A few hundred seeded mutations of real ustar, GNU and pax shards (sizes: negative, base-256,
  huge, not octal; type flags; header bytes under the checksum; pax record lengths and syntax;
  truncation anywhere and at header boundaries): each scan ends within 2 s and 2 GiB with exactly
  the members before the damage and the damage named, never an exception or a member outside the
  file."""
  start = time.monotonic()
  out = run_bounded(f"import json, test_tar_shards as t; "
                    f"print(json.dumps(t.fuzz({str(tmp_path)!r}, seed=0, cases=400)))", timeout=120)
  seen = json.loads(out.strip().splitlines()[-1])
  assert sum(seen.values()) == 400 and set(seen) == {"same", "cut", "damage", "any"}, seen
  assert time.monotonic() - start < 60
