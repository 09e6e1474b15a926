"""Weight files from strangers (rankclip_jax/interop/tensor_files.py): real torch.save and
TorchScript files read as torch reads them, and hostile ones refused with WeightFileError naming the
file, never running code (torch installed or not), reading outside a storage, or blowing up memory.

The real torch files are made once per module by tests/weight_files_reference.py in the .venv-torch
python (skipped without it, except in CI: .ci/run sets RANKCLIP_JAX_CI=1). Crafted files are written
here: their data.pkl is assembled from pickle opcodes, the way a crafted file would be. Reads that
could crash, hang or blow up run in a subprocess with a timeout and an address-space limit.
"""

import json
import os
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from rankclip_jax.interop import open_clip as oc
from rankclip_jax.interop import tensor_files
from rankclip_jax.interop.tensor_files import WeightFileError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.environ.get("RANKCLIP_TORCH_PYTHON", os.path.join(REPO, ".venv-torch", "bin",
                                                                    "python"))
SETUP = "python3 -m venv .venv-torch && .venv-torch/bin/pip install -r requirements-torch.txt"
EVIL = ["evil_system.pt", "evil_exec.pt", "evil_legacy.pt", "evil_script.pt"]


def _env(**extra):
  """This environment for a subprocess, minus virtualenv/python settings, reading this repo."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
  return dict(env, PYTHONPATH=REPO, **extra)


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory):
  if not os.path.exists(TORCH_PYTHON):
    missing = pytest.fail if os.environ.get("RANKCLIP_JAX_CI") else pytest.skip
    missing(f"torch not installed at {TORCH_PYTHON}; make it with: {SETUP}")
  out = tmp_path_factory.mktemp("torch_files")
  proc = subprocess.run([TORCH_PYTHON, "-W", "ignore", os.path.join(REPO, "tests",
                                                                    "weight_files_reference.py"),
                         str(out)], capture_output=True, text=True, env=_env(), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


# --------------------------------------------------------------------------- crafted files

def _str(s: str) -> bytes:
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:
  if -2**31 <= v < 2**31:
    return b"J" + struct.pack("<i", v)
  n = (v.bit_length() + 8) // 8
  return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _tuple(values) -> bytes:
  return b"(" + b"".join(_int(v) for v in values) + b"t"


def tensor(key="0", numel=4, offset=0, size=(4,), stride=(1,), storage="FloatStorage") -> bytes:
  """The opcodes torch.save writes for one tensor: _rebuild_tensor_v2(persistent storage record,
  offset, size, stride, requires_grad, hooks)."""
  record = b"(" + _str("storage") + f"ctorch\n{storage}\n".encode() + _str(key) + _str("cpu")
  record += _int(numel) + b"tQ"
  return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + record + _int(offset) + _tuple(size)
          + _tuple(stride) + b"\x89ccollections\nOrderedDict\n)RtR")


def state_dict_pickle(tensors: dict) -> bytes:
  return b"\x80\x02}(" + b"".join(_str(k) + v for k, v in tensors.items()) + b"u."


def write_archive(path, pkl: bytes, storages: dict, deflated=()) -> str:
  """A torch.save-layout zip: archive/data.pkl and archive/data/<key>."""
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl)
    for key, raw in storages.items():
      z.writestr(f"archive/data/{key}", raw, compress_type=(
          zipfile.ZIP_DEFLATED if key in deflated else zipfile.ZIP_STORED))
  return str(path)


def floats(n: int, start=1.0) -> bytes:
  return np.arange(start, start + n, dtype="<f4").tobytes()


def _read_bounded(paths, timeout=120, extra_gib=1) -> list:
  """read_state_dict on each path in a subprocess limited to `extra_gib` GiB of address space over
  its size: -> per path ["ok", {name: shape}] or ["WeightFileError"/other type, message]."""
  script = f"""
import json, resource, sys
from rankclip_jax.interop import tensor_files
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + ({extra_gib} << 30), vm + ({extra_gib} << 30)))
out = []
for path in sys.argv[1:]:
  try:
    state = tensor_files.read_state_dict(path)
    out.append(["ok", {{k: list(v.shape) for k, v in state.items()}}])
  except Exception as e:
    out.append([type(e).__name__, str(e)])
print(json.dumps(out))
"""
  proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True,
                        text=True, env=_env(), timeout=timeout)
  assert proc.returncode == 0, f"the reader crashed (status {proc.returncode}): " + (
      proc.stderr[-2000:])
  return json.loads(proc.stdout)


# --------------------------------------------------------------------------- real files

def _expected(torch_files, name):
  meta = json.loads((torch_files / "expected.json").read_text())[name]
  raw = np.load(torch_files / f"{name[:-3]}.npz")
  return meta, raw


@pytest.mark.parametrize("name", ["plain.pt", "views.pt", "traced.pt", "scripted.pt",
                                  "clip_traced.pt"])
def test_real_torch_files_read_as_torch_reads_them(torch_files, name):
  """torch.save state dicts (a checkpoint with "module." prefixes, shared storages) and TorchScript
  archives (state dict collected from the module tree, as torch.jit.load(...).state_dict())."""
  meta, raw = _expected(torch_files, name)
  state = tensor_files.read_state_dict(str(torch_files / name))
  assert list(state) == list(meta)
  for key, (dtype, shape) in meta.items():
    assert (state[key].dtype.name, list(state[key].shape)) == (dtype, shape), key
    assert np.ascontiguousarray(state[key]).tobytes() == raw[key].tobytes(), key
  if name == "views.pt":  # tied weights stay one block of memory
    assert np.shares_memory(state["emb.weight"], state["head.weight"])
  if name == "clip_traced.pt":  # the layout of OpenAI's original .pt files
    spec = oc.infer_spec(state, act="gelu", image_heads=2, text_heads=2)
    assert (spec["image_size"], spec["context_length"], spec["vocab_size"]) == (16, 8, 50)
    oc.to_flax(state, spec)


def test_no_code_runs_even_with_torch_installed(torch_files):
  """Files whose data.pkl calls os.system / builtins.exec (torch.save zip, legacy pickle,
  TorchScript archive) are refused, read in the .venv-torch python where torch imports."""
  mld = torch_files / "mld"
  mld.mkdir(exist_ok=True)
  if not (mld / "ml_dtypes").exists():  # the same numpy in both environments (requirements*.txt)
    os.symlink(os.path.dirname(ml_dtypes.__file__), mld / "ml_dtypes")
  script = """
import json, sys, torch
from rankclip_jax.interop import tensor_files
out = {}
for path in sys.argv[1:]:
  try:
    tensor_files.read_state_dict(path)
    out[path] = "read"
  except Exception as e:
    out[path] = [type(e).__name__, str(e)]
print(json.dumps(dict(torch=torch.__version__, results=out)))
"""
  paths = [str(torch_files / name) for name in EVIL]
  proc = subprocess.run([TORCH_PYTHON, "-c", script, *paths], capture_output=True, text=True,
                        env=dict(_env(), PYTHONPATH=f"{REPO}:{mld}"), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.splitlines()[-1])
  assert got["torch"]
  for name, path in zip(EVIL, paths):
    assert not (torch_files / f"PWNED-{name[:-3]}").exists(), f"{name}: its payload ran"
    kind, message = got["results"][path]
    assert kind == "WeightFileError" and message.startswith(path), (name, kind, message)
  # And here, without torch.
  for name, path in zip(EVIL, paths):
    with pytest.raises(WeightFileError, match=path):
      tensor_files.read_state_dict(path)
    assert not (torch_files / f"PWNED-{name[:-3]}").exists()


# --------------------------------------------------------------------------- torch.save, crafted

def test_crafted_state_dict_reads(tmp_path):
  """The crafted layout itself reads: the refusals below are about their one change."""
  path = write_archive(tmp_path / "ok.pt", state_dict_pickle(
      {"a": tensor(size=(2, 2), stride=(2, 1)), "b": tensor(size=(2, 2), stride=(1, 2)),
       "c": tensor(offset=3, size=(), stride=()), "d": tensor(key="1", numel=0, size=(0, 5),
                                                                stride=(5, 1))}),
      {"0": floats(4), "1": b""})
  state = tensor_files.read_state_dict(path)
  np.testing.assert_array_equal(state["a"], [[1, 2], [3, 4]])
  np.testing.assert_array_equal(state["b"], [[1, 3], [2, 4]])
  assert state["c"].shape == () and state["c"] == 4
  assert state["d"].shape == (0, 5)


OUTSIDE = [
    (0, (64,), (1,)),  # 64 elements over a 4-element storage: heap bytes
    (0, (2, 3), (1 << 40, 1)),  # a stride far past the storage: a segfault
    (5, (1,), (1,)), (4, (1,), (1,)), (3, (2,), (1,)),  # offset at or past the end
    (-1, (2,), (1,)), (0, (-2,), (1,)), (0, (2,), (-1,)),  # negatives
    (0, (2, 2), (1,)),  # fewer strides than sizes
]


def test_a_tensor_outside_its_storage_is_refused(tmp_path):
  """Each case of OUTSIDE, read in one bounded subprocess (the unchecked reader segfaulted)."""
  paths = [write_archive(tmp_path / f"oob{i}.pt", state_dict_pickle(
      {"ok": tensor(), "bad.weight": tensor(offset=offset, size=size, stride=stride)}),
                         {"0": floats(4)}) for i, (offset, size, stride) in enumerate(OUTSIDE)]
  for case, path, (kind, message) in zip(OUTSIDE, paths, _read_bounded(paths)):
    assert kind == "WeightFileError" and path in message and "bad.weight" in message, (case,
                                                                                     message)


def test_views_cannot_amplify_memory(tmp_path):
  """Expanded (stride-0) or overlapping views of a small storage are refused past 4x the stored
  bytes; views within it (tied, sliced) are not copied."""
  expanded = write_archive(tmp_path / "expanded.pt", state_dict_pickle(
      {f"e{i}": tensor(size=(1 << 20,), stride=(0,)) for i in range(16)}), {"0": floats(4)})
  overlapping = write_archive(tmp_path / "overlapping.pt", state_dict_pickle(
      {f"o{i}": tensor(numel=1 << 14, size=(1 << 14,)) for i in range(1000)}),
                              {"0": floats(1 << 14)})
  results = _read_bounded([expanded, overlapping])
  for path, (kind, message) in zip([expanded, overlapping], results):
    assert kind == "WeightFileError" and path in message, message
  fine = write_archive(tmp_path / "fine.pt", state_dict_pickle(
      {"tied.a": tensor(numel=16, size=(4, 4), stride=(4, 1)),
       "tied.b": tensor(numel=16, size=(4, 4), stride=(4, 1)),
       "row": tensor(numel=16, offset=4, size=(4,)),
       "ids": tensor(key="1", numel=8, size=(1, 8), stride=(0, 1), storage="LongStorage")}),
                       {"0": floats(16), "1": np.arange(8, dtype="<i8").tobytes()})
  state = tensor_files.read_state_dict(fine)
  assert np.shares_memory(state["tied.a"], state["tied.b"])
  assert np.shares_memory(state["tied.a"], state["row"])
  np.testing.assert_array_equal(state["ids"], [np.arange(8)])


def test_zip_members_are_bounded_before_they_are_read(tmp_path, monkeypatch):
  """A storage deflated from 64 MiB of zeros (a zip bomb), a storage member bigger than its record
  says, and a data.pkl over its cap are refused from their zip entries, never opened."""
  n = 16 << 20
  bomb = write_archive(tmp_path / "bomb.pt", state_dict_pickle(
      {"w": tensor(numel=n, size=(n,))}), {"0": bytes(4 * n)}, deflated=("0",))
  assert os.path.getsize(bomb) < 1 << 20
  oversized = write_archive(tmp_path / "oversized.pt", state_dict_pickle({"w": tensor()}),
                            {"0": floats(1 << 18)})
  opened = []
  original = zipfile.ZipFile.open

  def spy(self, name, *args, **kwargs):
    opened.append(getattr(name, "filename", name))
    return original(self, name, *args, **kwargs)

  monkeypatch.setattr(zipfile.ZipFile, "open", spy)
  for path in (bomb, oversized):
    with pytest.raises(WeightFileError, match=path):
      tensor_files.read_state_dict(path)
  assert "archive/data/0" not in opened
  monkeypatch.setattr(tensor_files, "MAX_PICKLE_BYTES", 100)
  opened.clear()
  with pytest.raises(WeightFileError, match=f"{bomb}.*data.pkl"):
    tensor_files.read_state_dict(bomb)
  assert "archive/data.pkl" not in opened


def test_a_pickle_memo_index_cannot_allocate_gigabytes(tmp_path):
  """CPython's unpickler sizes its memo table by the largest index given: LONG_BINPUT 2**28 in a
  14-byte data.pkl would take 4 GiB."""
  pkl = b"\x80\x02}r" + struct.pack("<I", 1 << 28) + b"."
  path = write_archive(tmp_path / "memo.pt", pkl, {})
  [(kind, message)] = _read_bounded([path])
  assert kind == "WeightFileError" and path in message and "memo" in message, message


@pytest.mark.parametrize("pkl,match", [
    (b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueR.", "posix.system"),
    (b"\x80\x02]q\x00.", "not a state dict"),
    (b"\x80\x02}(J\x05\x00\x00\x00" + tensor() + b"u.", "not a string"),
    (b"\x80\x02}(" + _str("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(J\x00\x00\x00\x00J\x00\x00"
     b"\x00\x00))tR" + b"u.", "not a storage"),
    (b"\x80\x02}(" + _str("w") + tensor(key="../data.pkl") + b"u.", "storage record"),
    (b"\x80\x02}(" + _str("w") + tensor(key="9") + b"u.", "storage 9 .*missing"),
    (b"\x80\x02}(" + _str("w") + tensor(numel=5) + b"u.", "holds 16 bytes"),
    (b"\x80\x02}(" + _str("w") + tensor() + b"}bu.", "not a readable state dict"),
    (b"\x80\x02}(" + _str("w") + tensor()[:40], "not a readable state dict"),
    (b"\x80\x07}.", "not a readable state dict"),
])
def test_malformed_data_pkl_is_a_weight_file_error(tmp_path, pkl, match):
  path = write_archive(tmp_path / "bad.pt", pkl, {"0": floats(4)})
  with pytest.raises(WeightFileError, match=f"{path}: .*{match}"):
    tensor_files.read_state_dict(path)


def test_not_a_zip_or_a_damaged_zip(tmp_path):
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.")  # torch's legacy magic number
  with pytest.raises(WeightFileError, match="legacy.pt: not a zip archive.*weights_only=True"):
    tensor_files.read_state_dict(str(legacy))
  good = write_archive(tmp_path / "cut.pt", state_dict_pickle({"w": tensor()}), {"0": floats(4)})
  with open(good, "r+b") as f:
    f.truncate(os.path.getsize(good) - 30)
  with pytest.raises(WeightFileError, match="cut.pt: a damaged zip"):
    tensor_files.read_state_dict(good)


# --------------------------------------------------------------------------- safetensors

def _safetensors(path, header, data=b"", length=None) -> str:
  encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
  return str(path)


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header,match", [
    ([], "not a JSON object"),
    ({"a": [1, 2]}, "'a' is described by a list"),
    ({"a": {"shape": [2], "data_offsets": [0, 8]}}, "'a' has dtype None"),
    ({"a": {"dtype": "F8", "shape": [2], "data_offsets": [0, 8]}}, "'a' has dtype F8"),
    ({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, "'a' has a shape"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "'a' has a shape"),
    ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, "'a' has a shape"),
    ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, "'a' has a shape"),
    ({"a": {"dtype": "F32", "shape": [2]}}, "'a' has data_offsets None"),
    ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, -4]}}, r"data_offsets \[0, -4\]"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, r"data_offsets \[8, 4\]"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": "0,8"}}, "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "8 bytes for shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 80]}}, "truncated"),
    (dict(GOOD, b={"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}), "share bytes"),
    (dict(GOOD, __metadata__={"k": 1}), "__metadata__"),
    (dict(GOOD, __metadata__=["k"]), "__metadata__"),
    (b"{" * 100_000, "not a .safetensors file"),
    (b"[" * 100_000 + b"]" * 100_000, "not a .safetensors file"),
    (b"\xff\xfe{}", "not a .safetensors file"),
])
def test_malformed_safetensors_headers_are_weight_file_errors(tmp_path, header, match):
  path = _safetensors(tmp_path / "bad.safetensors", header, floats(2))
  with pytest.raises(WeightFileError, match=f"{path}: .*{match}"):
    tensor_files.read_state_dict(path)


def test_safetensors_header_length_is_capped(tmp_path):
  """Over the spec's 100 MB, refused before reading (a sparse file: nothing is written)."""
  path = _safetensors(tmp_path / "huge.safetensors", b"{}", length=100_000_001)
  with open(path, "r+b") as f:
    f.truncate(100_000_100)
  with pytest.raises(WeightFileError, match="over the format's limit"):
    tensor_files.read_safetensors(path)


def test_safetensors_edge_cases_that_are_valid(tmp_path):
  path = _safetensors(tmp_path / "ok.safetensors", {
      "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
      "scalar": {"dtype": "BF16", "shape": [], "data_offsets": [8, 10]},
      "__metadata__": None}, floats(2) + np.array(1.5, ml_dtypes.bfloat16).tobytes())
  state, meta = tensor_files.read_safetensors(path)
  assert meta == {} and state["empty"].shape == (0, 3) and float(state["scalar"]) == 1.5
  np.testing.assert_array_equal(state["a"], [1, 2])


# --------------------------------------------------------------------------- fuzz

def test_fuzzed_weight_files_are_read_or_refused(torch_files, tmp_path):
  """600 seeded mutations of real torch.save / TorchScript files and of a .safetensors file
  (tests/weight_files_fuzz.py), in a subprocess under a timeout and a 2 GiB address-space margin:
  each returns arrays whose bytes come from the file's storages or raises WeightFileError naming
  the file; nothing crashes, hangs, blows up or runs a payload."""
  seeds = tmp_path / "seeds"
  seeds.mkdir()
  for name in ("plain.pt", "views.pt", "traced.pt"):
    (seeds / name).write_bytes((torch_files / name).read_bytes())
  work = tmp_path / "work"
  work.mkdir()
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "tests", "weight_files_fuzz.py"), str(seeds), str(work),
       "600", "0"], capture_output=True, text=True, env=_env(), timeout=240)
  assert proc.returncode == 0, f"status {proc.returncode}: {proc.stderr[-3000:]}"
  result = json.loads(proc.stdout.splitlines()[-1])
  assert not result["failures"], json.dumps(result["failures"], indent=1)[:6000]
  outcomes = result["outcomes"]
  for kind in ("plain", "views", "traced", "safetensors"):  # each seed both read and refused
    assert outcomes.get(f"{kind}:read", 0) > 5 and outcomes.get(f"{kind}:refused", 0) > 50, outcomes
  assert not list(work.glob("PWNED-*"))
