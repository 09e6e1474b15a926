"""Seeded mutations of real weight files, read by rankclip_jax.interop.tensor_files; run as a
subprocess by tests/test_weight_files.py (so a crash, a hang or a blow-up fails that test instead of
killing pytest):

    python tests/weight_files_fuzz.py SEED_DIR WORK_DIR CASES SEED

SEED_DIR holds real torch.save / torch.jit.save files (*.pt). Each case mutates one of them (integer
arguments, globals, strings and bytes of data.pkl, memo indices, storage members, zip bytes, code
payloads) or a .safetensors file written here (header fields, offsets, lengths, bytes), and reads
it.
A case passes when the reader returns a dict of numpy arrays whose every element's bytes occur in
the file's storages (they are random and never zero, so stray heap bytes show), or raises
WeightFileError. Prints one JSON line: {"cases", "outcomes" (per kind), "failures"}. Runs under an
address-space limit of 2 GiB over its own size, each case under a 10 s alarm.
"""

import json
import os
import pickletools
import resource
import signal
import struct
import sys
import traceback
import zipfile
from collections import Counter

import numpy as np

from rankclip_jax.interop import tensor_files

INTS = [0, 1, 2, 3, -1, -2, 7, 255, 256, 2**15, 2**31 - 1, -2**31, 2**32, 2**40, 2**62, 2**63,
        2**64 + 5, -2**63]
GLOBALS = ["torch\nFloatStorage", "torch\nHalfStorage", "torch\nDoubleStorage",
           "torch\nByteStorage", "torch\nBFloat16Storage", "torch\nLongStorage", "torch\nfloat32",
           "torch\nfloat64",
           "torch.storage\nUntypedStorage", "collections\nOrderedDict",
           "torch._utils\n_rebuild_tensor_v2", "torch._utils\n_rebuild_parameter",
           "torch.jit._pickle\nbuild_intlist", "torch.jit._pickle\nrestore_type_tag",
           "__torch__\nFoo", "__torch__.torch.nn.modules.linear\nLinear", "builtins\nexec",
           "posix\nsystem", "builtins\ngetattr", "numpy\nndarray", "torch\nStorage"]
STRINGS = ["storage", "0", "1", "2", "99", "../0", "0/x", "", "cpu", "weight", "training",
           "state_dict", "x" * 300, "\u00e9"]


class Hang(Exception):
  pass


def _alarm(*unused):
  raise Hang("over 10 s")


def pick(rng, seq):
  return seq[rng.integers(len(seq))]


# --------------------------------------------------------------------------- pickle edits

def _int_op(v: int) -> bytes:
  if 0 <= v < 256:
    return b"K" + bytes([v])
  if -2**31 <= v < 2**31:
    return b"J" + struct.pack("<i", v)
  n = (v.bit_length() + 8) // 8
  return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _str_op(s: str) -> bytes:
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _ops(pkl: bytes):
  """[(name, arg, start, end)] of data.pkl's opcodes."""
  ops = list(pickletools.genops(pkl))
  ends = [pos for _, _, pos in ops[1:]] + [len(pkl)]
  return [(op.name, arg, pos, end) for (op, arg, pos), end in zip(ops, ends)]


def _splice(pkl, start, end, new):
  return pkl[:start] + new + pkl[end:]


def mutate_pickle(pkl: bytes, rng, marker: str) -> tuple[bytes, str]:
  ops = _ops(pkl)
  kind = pick(rng, ["int", "int", "int", "global", "string", "bytes", "opcode", "truncate",
                     "memo", "payload", "drop"])
  if kind == "int":
    ints = [o for o in ops if o[0] in ("BININT1", "BININT2", "BININT", "LONG1")]
    for _ in range(rng.integers(1, 4)):
      name, arg, start, end = ints[rng.integers(len(ints))]
      value = int(pick(rng, INTS)) if rng.random() < 0.6 else int(arg) + int(rng.integers(-3, 64))
      new = _int_op(value)
      pkl = _splice(pkl, start, end, new)
      ints = [o for o in _ops(pkl) if o[0] in ("BININT1", "BININT2", "BININT", "LONG1")]
  elif kind == "global":
    found = [o for o in ops if o[0] == "GLOBAL"]
    _, _, start, end = found[rng.integers(len(found))]
    pkl = _splice(pkl, start, end, b"c" + pick(rng, GLOBALS).encode() + b"\n")
  elif kind == "string":
    found = [o for o in ops if o[0] in ("BINUNICODE", "SHORT_BINUNICODE")]
    _, _, start, end = found[rng.integers(len(found))]
    pkl = _splice(pkl, start, end, _str_op(str(pick(rng, STRINGS))))
  elif kind == "bytes":
    for _ in range(rng.integers(1, 5)):
      pos = int(rng.integers(len(pkl)))
      edit = rng.integers(3)
      if edit == 0:
        pkl = pkl[:pos] + bytes([rng.integers(256)]) + pkl[pos + 1:]
      elif edit == 1:
        junk = bytes(rng.integers(0, 256, rng.integers(1, 5), dtype=np.uint8))
        pkl = pkl[:pos] + junk + pkl[pos:]
      else:
        pkl = pkl[:pos] + pkl[pos + rng.integers(1, 5):]
  elif kind == "opcode":
    _, _, start, _ = ops[rng.integers(1, len(ops))]
    code = pick(rng, list(b"()0.12NQRSVXabcdehjlpqrstu}~\x80\x81\x82\x85\x86\x87\x88\x89\x8a"
                           b"\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95"))
    pkl = _splice(pkl, start, start, bytes([code]) + bytes(
        rng.integers(0, 256, rng.integers(0, 9), dtype=np.uint8)))
  elif kind == "truncate":
    pkl = pkl[:rng.integers(len(pkl))]
  elif kind == "memo":
    _, _, start, _ = ops[rng.integers(1, len(ops) - 1)]
    pkl = _splice(pkl, start, start, b"N" + b"r" + struct.pack("<I", int(pick(rng, 
        [2**26, 2**28, 2**31, 2**32 - 1]))) + b"0")
  elif kind == "payload":  # push os.system(<touch marker>), call it, drop the result
    _, _, start, _ = ops[rng.integers(1, len(ops) - 1)]
    call = pick(rng, ["posix\nsystem", "builtins\nexec", "os\nsystem"])
    arg = f"touch {marker}" if "system" in call else f"open({marker!r}, 'w').close()"
    pkl = _splice(pkl, start, start, b"c" + call.encode() + b"\n" + _str_op(arg) + b"\x85R0")
  else:  # drop one opcode
    _, _, start, end = ops[rng.integers(1, len(ops))]
    pkl = _splice(pkl, start, end, b"")
  return pkl, kind


# --------------------------------------------------------------------------- zip edits

def mutate_zip(members: dict, rng, marker: str) -> tuple[dict, str, bool, str]:
  """-> (members, kind, deflate, raw edit)."""
  members = dict(members)
  pkl_name = next(n for n in members if n.endswith("/data.pkl") and n.count("/") == 1)
  storages = [n for n in members if "/data/" in n]
  kind = pick(rng, ["pickle"] * 6 + ["storage", "storage", "deflate", "raw", "code"])
  deflate, raw = False, ""
  if kind == "pickle":
    members[pkl_name], kind = mutate_pickle(members[pkl_name], rng, marker)
    kind = f"pickle.{kind}"
  elif kind == "storage":
    name = storages[rng.integers(len(storages))]
    edit = pick(rng, ["truncate", "extend", "delete", "rename", "bomb", "empty"])
    if edit == "truncate":
      members[name] = members[name][:rng.integers(len(members[name]) + 1)]
    elif edit == "extend":
      members[name] += bytes(rng.integers(1, 256, rng.integers(1, 64), dtype=np.uint8))
    elif edit == "delete":
      del members[name]
    elif edit == "rename":
      members[name.rsplit("/", 1)[0] + "/7"] = members.pop(name)
    elif edit == "bomb":
      members[name] = bytes(4 << 20)
      deflate = True
    else:
      members[name] = b""
    kind = f"storage.{edit}"
  elif kind == "deflate":
    deflate = True
  elif kind == "raw":
    raw = pick(rng, ["flip", "truncate"])
    kind = f"raw.{raw}"
  else:  # code: a class's declarations replaced, or junk
    code = [n for n in members if "/code/" in n and n.endswith(".py")]
    if not code:
      members[pkl_name], sub = mutate_pickle(members[pkl_name], rng, marker)
      return members, f"pickle.{sub}", deflate, raw
    name = code[rng.integers(len(code))]
    members[name] = pick(rng, [b"", b"\xff\xfe junk", b"class X(Module):\n  __parameters__ = [\"a",
                                members[name].replace(b"__parameters__", b"__buffers__"),
                                b"class Linear(Module):\n" + b"  __parameters__ = [\"w\", ]\n" * 3])
  return members, kind, deflate, raw


def write_zip(path, members, deflate, raw, rng):
  with zipfile.ZipFile(path, "w") as z:
    for name, data in members.items():
      info = zipfile.ZipInfo(name)
      info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
      z.writestr(info, data)
  if raw:
    data = bytearray(open(path, "rb").read())
    if raw == "flip":
      for _ in range(rng.integers(1, 6)):
        data[rng.integers(len(data))] = rng.integers(256)
    else:
      data = data[:rng.integers(len(data))]
    open(path, "wb").write(bytes(data))


# --------------------------------------------------------------------------- safetensors edits

def safetensors_seed(rng):
  def rand(shape, dtype):
    dtype = np.dtype(dtype)
    raw = rng.integers(1, 256, int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8).tobytes()
    return np.frombuffer(raw, dtype).reshape(shape)
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  return {"a": rand((3, 4), np.float32), "b": rand((5,), np.float16),
          "c": rand((2, 3), ml_dtypes.bfloat16), "d": rand((4,), np.int64),
          "e": rand((), np.float32), "f": rand((0, 2), np.float32), "g": rand((7,), np.uint8)}


def mutate_safetensors(raw: bytes, rng) -> tuple[bytes, str]:
  (n,) = struct.unpack("<Q", raw[:8])
  header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
  names = [k for k in header if k != "__metadata__"]
  name = names[rng.integers(len(names))]
  junk = [None, 5, -1, 1.5, "x", [], {}, [1, 2, 3], [-4], [0, -4], [8, 4], [0, 10**20], [True, 4],
          [[1]], ["0", "4"], 2**64, [2**40, 0], [0, 2**62]]
  kind = pick(rng, ["dtype", "shape", "offsets", "offsets", "field", "entry", "top", "metadata",
                     "length", "bytes", "truncate", "nest", "overlap"])
  if kind == "dtype":
    header[name]["dtype"] = pick(rng, ["F32", "F64", "U8", "I8", "BF16", "F8_E4M3", "", "f32"]
                                       + [None, 3])
  elif kind == "shape":
    header[name]["shape"] = pick(rng, junk + [[3, 4], [12], [4, 3], [2, 2, 3], [0], [1] * 40])
  elif kind == "offsets":
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = pick(rng, junk + [[begin + 1, end + 1], [begin, end - 1],
                                                      [end, begin], [begin - 1, end - 1],
                                                      [0, len(data) + 8]])
  elif kind == "field":
    field = pick(rng, ["dtype", "shape", "data_offsets"])
    if rng.random() < 0.5:
      del header[name][field]
    else:
      header[name][field] = pick(rng, junk)
  elif kind == "entry":
    header[name] = pick(rng, junk)
  elif kind == "top":
    header = pick(rng, [[], 5, "x", None, [header]])
  elif kind == "metadata":
    header["__metadata__"] = pick(rng, [{"a": 1}, [], "x", {"a": {"b": "c"}}, None, 5, {}])
  elif kind == "overlap":
    other = names[rng.integers(len(names))]
    header[name]["data_offsets"] = header[other]["data_offsets"]
    header[name]["shape"], header[name]["dtype"] = header[other]["shape"], header[other]["dtype"]
  encoded = json.dumps(header).encode() if kind != "nest" else b"[" * 200000 + b"]" * 200000
  out = struct.pack("<Q", len(encoded)) + encoded + data
  if kind == "length":
    value = int(pick(rng, [0, 1, len(encoded) - 1, len(encoded) + 1, 2**63, 100_000_001,
                            len(out)]))
    out = struct.pack("<Q", value) + out[8:]
  elif kind == "bytes":
    out = bytearray(out)
    for _ in range(rng.integers(1, 6)):
      out[rng.integers(len(out))] = rng.integers(256)
    out = bytes(out)
  elif kind == "truncate":
    out = out[:rng.integers(len(out))]
  return out, kind


# --------------------------------------------------------------------------- checks

def chunks(blobs):
  """{itemsize: every run of that many bytes in blobs}."""
  return {k: {b[i:i + k] for b in blobs for i in range(len(b) - k + 1)} for k in (1, 2, 4, 8)}


def check(result, allowed, file_bytes):
  if not isinstance(result, dict):
    return f"returned a {type(result).__name__}"
  total = 0
  for key, a in result.items():
    if not isinstance(key, str) or not isinstance(a, np.ndarray):
      return f"{key!r}: a {type(a).__name__}"
    total += a.nbytes
    if a.size == 0:
      continue
    k = a.dtype.itemsize
    flat = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(-1, k)
    for row in np.unique(flat, axis=0)[:4096]:
      if row.tobytes() not in allowed[k]:
        return f"{key!r}: element bytes {row.tobytes()!r} are not from the file's storages"
  if total > 4 * file_bytes + (1 << 20):
    return f"returned {total} bytes from a file of {file_bytes}"
  return None


def main():
  seed_dir, work, cases, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
  with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
  resource.setrlimit(resource.RLIMIT_AS, (vm + (2 << 30), vm + (2 << 30)))
  signal.signal(signal.SIGALRM, _alarm)
  rng = np.random.default_rng(seed)
  seeds = {}
  for name in sorted(os.listdir(seed_dir)):
    if name.endswith(".pt"):
      with zipfile.ZipFile(os.path.join(seed_dir, name)) as z:
        seeds[name] = {i.filename: z.read(i) for i in z.infolist()}
  st_path = os.path.join(work, "seed.safetensors")
  tensor_files.write_safetensors(st_path, safetensors_seed(rng))
  st_seed = open(st_path, "rb").read()
  outcomes, failures = Counter(), []
  for case in range(cases):
    marker = os.path.join(work, f"PWNED-{case}")
    if case % 3 == 2:
      data, kind = mutate_safetensors(st_seed, rng)
      path = os.path.join(work, f"case{case}.safetensors")
      with open(path, "wb") as f:
        f.write(data)
      blobs = [data]  # its data region, wherever a mutated header says that starts
      kind = f"safetensors.{kind}"
    else:
      name = sorted(seeds)[rng.integers(len(seeds))]
      members, kind, deflate, raw = mutate_zip(seeds[name], rng, marker)
      path = os.path.join(work, f"case{case}.pt")
      write_zip(path, members, deflate, raw, rng)
      blobs = [v for n, v in members.items() if "/data/" in n]
      kind = f"{name}.{kind}"
    signal.alarm(10)
    try:
      result = tensor_files.read_state_dict(path)
      problem = check(result, chunks(blobs), os.path.getsize(path))
      outcome = "read" if problem is None else "bad"
    except tensor_files.WeightFileError as e:
      outcome, problem = "refused", (None if path in str(e) else f"error names no file: {e}")
    except Exception:  # pylint: disable=broad-except
      outcome, problem = "crashed", traceback.format_exc(limit=4)[-1500:]
    finally:
      signal.alarm(0)
    if os.path.exists(marker):
      outcome, problem = "ran code", f"the payload ran: {marker}"
    outcomes[f"{outcome}"] += 1
    outcomes[f"{kind.split('.')[0]}:{outcome}"] += 1
    if problem:
      failures.append(dict(case=case, kind=kind, outcome=outcome, problem=problem))
    os.remove(path)
  print(json.dumps(dict(cases=cases, outcomes=outcomes, failures=failures[:20])))


if __name__ == "__main__":
  main()
