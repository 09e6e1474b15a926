"""Reading and writing PyTorch weight files with numpy only (no torch needed).

- `.safetensors`: read and written (the format: an 8-byte little-endian header length, a JSON header
  {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw little-endian bytes).
- `.pt` / `.pth` / `.bin` written by `torch.save(state_dict)` (a zip archive holding `data.pkl` and
  one file per storage): read by an unpickler that only accepts the handful of names a state dict
  uses (tensor rebuild functions, storage types, OrderedDict), like torch's `weights_only=True`.
  Anything else (a pickled model, a TorchScript archive such as OpenAI's original `ViT-B-32.pt`)
  is refused with the command that turns it into a state dict; when torch is installed those are
  read through it instead.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import zipfile
from typing import Mapping

import ml_dtypes
import numpy as np

from rankclip_jax.errors import UserError

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}

# torch storage class name -> numpy dtype.
_TORCH_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "int64": np.int64, "int32": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}

TO_STATE_DICT_HINT = (
    "Turn it into a state dict first, where torch is installed:\n"
    "  python -c \"import torch; m = torch.jit.load('{path}', map_location='cpu'); "
    "torch.save(m.state_dict(), '{stem}_state_dict.pt')\"\n"
    "(for a pickled nn.Module: torch.load(..., weights_only=False).state_dict()).")


class WeightFileError(UserError, ValueError):
  """A weight file that cannot be read; the message names the file and what to do."""


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """-> (tensors by name, the header's string metadata)."""
  with open(path, "rb") as f:
    raw_len = f.read(8)
    if len(raw_len) != 8:
      raise WeightFileError(f"{path}: too short to be a .safetensors file.")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > os.path.getsize(path) - 8:
      raise WeightFileError(f"{path}: not a .safetensors file (header length {header_len} is "
                            "larger than the file).")
    try:
      header = json.loads(f.read(header_len))
    except ValueError as e:
      raise WeightFileError(f"{path}: not a .safetensors file ({e}).") from None
    data = f.read()
  metadata = header.pop("__metadata__", None) or {}
  tensors = {}
  for name, entry in header.items():
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise WeightFileError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which this "
                            f"reader does not handle ({sorted(_SAFETENSORS_DTYPES)}).")
    begin, end = entry["data_offsets"]
    if end > len(data):
      raise WeightFileError(f"{path}: tensor {name!r} runs past the end of the file (truncated "
                            "download?).")
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    tensors[name] = np.frombuffer(data, dtype, offset=begin,
                                  count=(end - begin) // dtype.itemsize).reshape(entry["shape"])
  return tensors, metadata


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _SAFETENSORS_NAMES:
      raise WeightFileError(f"{path}: cannot store {name!r} of dtype {array.dtype}.")
    raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": _SAFETENSORS_NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data start 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for raw in chunks:
      f.write(raw)
  os.replace(tmp, path)


class _Storage:
  def __init__(self, dtype, key: str):
    self.dtype, self.key = dtype, key


class _StorageType:
  def __init__(self, dtype):
    self.dtype = dtype


class _StateDictUnpickler(pickle.Unpickler):
  """Unpickles torch.save's data.pkl into numpy arrays, refusing every other global."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path
    self.storages: dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return self._rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks: data
    if module == "torch" and name in _TORCH_STORAGES:
      return _StorageType(_TORCH_STORAGES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _TORCH_DTYPES[name]
    if module == "torch.storage" and name == "UntypedStorage":
      return _StorageType(np.uint8)
    raise WeightFileError(
        f"{self.path}: holds {module}.{name}, not only a state dict of tensors. "
        + TO_STATE_DICT_HINT.format(path=self.path, stem=os.path.splitext(self.path)[0]))

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise WeightFileError(f"{self.path}: unexpected persistent id {pid!r}.")
    storage_type, key = pid[1], str(pid[2])
    dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else storage_type
    return _Storage(dtype, key)

  def _rebuild_tensor(self, storage, offset, size, stride, *unused):
    if storage.key not in self.storages:
      raw = self.archive.read(f"{self.prefix}/data/{storage.key}")
      self.storages[storage.key] = np.frombuffer(raw, np.dtype(storage.dtype).newbyteorder("<"))
    flat = self.storages[storage.key]
    if not size:
      return np.array(flat[offset])  # 0-d array, not a numpy scalar
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)  # own the memory, C order


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
  """A `torch.save(state_dict)` file -> {name: array}, without torch."""
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise WeightFileError(
        f"{path}: not a zip archive; files from torch < 1.6 (legacy pickle format) are not read "
        "without torch. Load and re-save it with a current torch, or convert it to .safetensors."
    ) from None
  with archive:
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
      if any(n.endswith("/constants.pkl") for n in names):
        raise WeightFileError(f"{path}: a TorchScript archive (like OpenAI's original CLIP .pt "
                              "files). " + TO_STATE_DICT_HINT.format(
                                  path=path, stem=os.path.splitext(path)[0]))
      raise WeightFileError(f"{path}: a zip archive without data.pkl: not a torch.save file.")
    prefix = pkl[0].split("/")[0]
    with archive.open(pkl[0]) as f:
      obj = _StateDictUnpickler(f, archive, prefix, path).load()
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]  # training checkpoints: {"epoch": ..., "state_dict": {...}}
  if not isinstance(obj, Mapping):
    raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict.")
  return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def _read_with_torch(path: str) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=g-import-not-at-top
  try:
    obj = torch.jit.load(path, map_location="cpu").state_dict()
  except RuntimeError:
    obj = torch.load(path, map_location="cpu", weights_only=False)
    obj = obj.state_dict() if hasattr(obj, "state_dict") else obj
  if "state_dict" in obj:
    obj = obj["state_dict"]
  return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
          for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` or torch `.pt`/`.pth`/`.bin` file -> {name: numpy array}."""
  if not os.path.isfile(path):
    raise WeightFileError(f"{path}: no such file.")
  if path.endswith(".safetensors"):
    return read_safetensors(path)[0]
  try:
    state = read_torch_zip(path)
  except WeightFileError as e:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
      raise e from None  # its message says how to get a state dict
    state = _read_with_torch(path)
  # open_clip trains some models with a "module." prefix (DistributedDataParallel).
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state
