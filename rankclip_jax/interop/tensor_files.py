"""Reading and writing PyTorch weight files with numpy only (no torch needed, no code from a file
ever run).

- `.safetensors`: read and written (the format: an 8-byte little-endian header length, a JSON header
  {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw little-endian bytes).
  The header is checked whole before any tensor is made: at most 100 MB (the safetensors spec's
  limit), a JSON object whose entries each have a known dtype, a shape of non-negative ints and
  data_offsets [begin, end] with 0 <= begin <= end <= the data's length and end - begin the shape's
  bytes, no two tensors sharing bytes, and `__metadata__` a str -> str mapping. Tensors are
  read-only views of the file's bytes.
- `.pt` / `.pth` / `.bin` written by `torch.save(state_dict)` (a zip archive holding
  `<prefix>/data.pkl` and one member per storage), plain or a training checkpoint
  {"state_dict": ...}: data.pkl is read by an unpickler that only accepts the handful of names a
  state dict uses (tensor rebuild functions, storage types, OrderedDict), like torch's
  `weights_only=True`.
- TorchScript archives written by `torch.jit.save` (OpenAI's original CLIP `.pt` files): the same
  unpickler also accepts TorchScript's `__torch__.*` classes, as inert records of their pickled
  attributes (nothing of the class is looked up or run); the state dict is collected by walking the
  module tree ("visual.conv1.weight"), keeping the attributes that the archive's `code/` declares as
  `__parameters__` and `__buffers__` (that code is scanned as text for those two lines, never run;
  a class it does not declare keeps all its tensor attributes).
- Anything else is refused with a WeightFileError naming the file: a pickled `nn.Module` or any
  other global (with the torch command that turns it into a state dict), a legacy (torch < 1.6)
  non-zip pickle. torch is never asked to read a file here: `torch.jit.load` and
  `torch.load(weights_only=False)` run code from it.

Hostile or damaged files: every failure to parse a file is a WeightFileError "<path>: not a
readable state dict (...)", and the reader bounds what a file can make it do:
- data.pkl at most 32 MiB, a code file at most 16 MiB (a state dict's data.pkl takes ~180 bytes
  a tensor: OpenCLIP's ViT-bigG/14, 974 tensors, 0.17 MB). Its opcodes are scanned before
  unpickling: memo indices must count up as picklers write them (CPython's unpickler allocates a
  memo table as long as the largest index given: one 10-byte pickle could take gigabytes).
- The members read from an archive (data.pkl, code, storages) may declare at most 4x the archive's
  size in all, checked before each is read: torch.save stores every member once and uncompressed,
  so an honest archive's members add up to less than its size; deflated members, or entries
  sharing the same bytes, beyond that are a zip bomb. A storage must hold exactly the elements its
  record declares.
- A tensor's offset, sizes and (non-negative) strides must stay inside its storage: its largest
  element index, offset + sum((size_i - 1) * stride_i), below the storage's element count.
- A tensor contiguous in its storage is a read-only view of it (no copy: tied weights and slices
  of a shared storage cost nothing); others (transposed, expanded) are copied. The arrays returned,
  each name counted, may hold at most 4x the bytes of the storages they come from, plus 1 MiB:
  real state dicts hold each storage's bytes once, or a few times for tied weights (T5 names one
  embedding three or four times), and expand only small buffers; overlapping or stride-0 views of
  a small storage could otherwise make gigabytes of arrays from kilobytes of file.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import zipfile
import zlib
from typing import Any, Iterator, Mapping

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

_MIB = 1 << 20
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; the safetensors spec's limit
MAX_PICKLE_BYTES = 32 * _MIB  # data.pkl
MAX_CODE_BYTES = 16 * _MIB  # one TorchScript code file
ARCHIVE_READ_FACTOR = 4  # members read <= 4x the archive's size
ARRAY_BYTES_FACTOR, ARRAY_BYTES_SLACK = 4, _MIB  # arrays returned <= 4x their storages + 1 MiB
MAX_NDIM = 32
MAX_MODULE_DEPTH = 64  # TorchScript module nesting (CLIP's: 6)
MAX_SCRIPT_CLASSES = 10_000  # distinct TorchScript classes in one archive (CLIP's: ~30)

TO_STATE_DICT_HINT = (
    "Turn it into a state dict first, where torch is installed:\n"
    "  python -c \"import torch; m = torch.jit.load('{path}', map_location='cpu'); "
    "torch.save(m.state_dict(), '{stem}_state_dict.pt')\"\n"
    "(for a pickled nn.Module: torch.load(..., weights_only=False).state_dict(); both run code "
    "from the file: only for a file you trust).")

# What parsing a damaged or crafted file can raise, from json, zipfile, zlib, pickle and numpy;
# anything else is a bug here and keeps its traceback.
_PARSE_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error,
                 EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError,
                 struct.error, OverflowError, RecursionError, MemoryError, NotImplementedError,
                 OSError)


class WeightFileError(UserError, ValueError):
  """A weight file that cannot be read; the message names the file and what to do."""


class _Damaged(UserError, ValueError):
  """A file that parses but holds what torch does not write; read_torch_zip turns it into a
  WeightFileError naming the file."""


def _unreadable(path: str, e: BaseException) -> WeightFileError:
  detail = " ".join(str(e).split())[:200]
  if not isinstance(e, _Damaged):
    detail = f"{type(e).__name__}: {detail}"
  return WeightFileError(f"{path}: not a readable state dict ({detail}).")


def _int(x) -> bool:
  return type(x) is int  # pylint: disable=unidiomatic-typecheck  (bool is not a size)


def _too_big(shape, itemsize: int) -> bool:
  """Whether an array of this shape could not even be described (zero-size ones included)."""
  return math.prod(max(d, 1) for d in shape) * itemsize >= 1 << 62


# --------------------------------------------------------------------------- safetensors

def _safetensors_entry(path: str, name: str, entry, data_len: int):
  """-> (dtype, shape, begin, end) of one header entry, checked; WeightFileError if malformed."""
  def bad(problem):
    return WeightFileError(f"{path}: tensor {name!r} {problem} (a damaged or non-standard "
                           ".safetensors file).")

  if not isinstance(entry, dict):
    raise bad(f"is described by a {type(entry).__name__}, not an object")
  dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
  if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
    raise WeightFileError(f"{path}: tensor {name!r} has dtype {str(dtype_name)[:20]}, which this "
                          f"reader does not handle ({sorted(_SAFETENSORS_DTYPES)}).")
  dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name]).newbyteorder("<")
  if (not isinstance(shape, list) or len(shape) > MAX_NDIM
      or not all(_int(d) and d >= 0 for d in shape) or _too_big(shape, dtype.itemsize)):
    raise bad("has a shape that is not a list of non-negative ints")
  if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1]):
    raise bad(f"has data_offsets {str(offsets)[:40]}, not [begin, end] with 0 <= begin <= end")
  begin, end = offsets
  if end > data_len:
    raise WeightFileError(f"{path}: tensor {name!r} runs past the end of the file (truncated "
                          "download?).")
  if end - begin != math.prod(shape) * dtype.itemsize:
    raise bad(f"has {end - begin} bytes for shape {shape} of {dtype_name}")
  return dtype, shape, begin, end


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """-> (tensors by name, the header's string metadata). The header is checked whole first (see
  the module docstring)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw_len = f.read(8)
    if len(raw_len) != 8:
      raise WeightFileError(f"{path}: too short to be a .safetensors file.")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len > size - 8:
      raise WeightFileError(f"{path}: not a .safetensors file (header length {header_len} is "
                            "larger than the file).")
    if header_len > MAX_SAFETENSORS_HEADER:
      raise WeightFileError(f"{path}: not a .safetensors file (header length {header_len} is "
                            f"over the format's limit of {MAX_SAFETENSORS_HEADER} bytes).")
    try:
      header = json.loads(f.read(header_len))
    except (ValueError, RecursionError) as e:
      raise WeightFileError(f"{path}: not a .safetensors file ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:200]}).") from None
    if not isinstance(header, dict):
      raise WeightFileError(f"{path}: not a .safetensors file (its header is a "
                            f"{type(header).__name__}, not a JSON object).")
    metadata = header.pop("__metadata__", {})
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
      raise WeightFileError(f"{path}: not a .safetensors file (__metadata__ is not a mapping of "
                            "strings to strings).")
    data_len = size - 8 - header_len
    entries = {name: _safetensors_entry(path, name, entry, data_len)
               for name, entry in header.items()}
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items()
                   if end > begin)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
      if begin < end:
        raise WeightFileError(f"{path}: tensors {first!r} and {second!r} share bytes (a damaged "
                              "or crafted .safetensors file).")
    data = f.read(data_len)
  if len(data) != data_len:
    raise WeightFileError(f"{path}: the file changed while it was read.")
  tensors = {}
  for name, (dtype, shape, begin, end) in entries.items():
    tensors[name] = np.frombuffer(data, dtype, offset=begin,
                                  count=(end - begin) // dtype.itemsize).reshape(shape)
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


# --------------------------------------------------------------------------- torch.save archives
# What the unpickler hands to pickle: inert records. Each refuses BUILD (pickle's way to set
# attributes on an object), so a file cannot rewrite them.

class _Inert:
  __slots__ = ()

  def __setstate__(self, state):
    raise _Damaged("data.pkl sets attributes on a storage, tensor or function record")


class _StorageType(_Inert):
  """torch.FloatStorage, torch.float32, ...: only its dtype."""
  __slots__ = ("dtype",)

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype).newbyteorder("<")


class _Storage(_Inert):
  __slots__ = ("dtype", "key", "numel")

  def __init__(self, dtype, key: str, numel: int):
    self.dtype, self.key, self.numel = dtype, key, numel


class _Tensor(_Inert):
  """A tensor as data.pkl describes it; checked and made into an array only if returned."""
  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Function(_Inert):
  """One of the few functions data.pkl may call (pickle's REDUCE)."""
  __slots__ = ("fn",)

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, *args):
    return self.fn(*args)


class _ScriptObject:
  """An object of a TorchScript class (`__torch__.*`): records its pickled state, nothing else."""
  __slots__ = ("state",)
  qualname = ("", "")  # (module, class), set on the subclass made for each class

  def __init__(self, *unused_args):
    pass

  def __setstate__(self, state):
    self.state = state


def _rebuild_tensor(storage, offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise _Damaged(f"data.pkl rebuilds a tensor from a {type(storage).__name__}, not a storage")
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *unused):
  return data


def _as_list(values, *unused):
  return list(values)


_STATE_DICT_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Function(_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Function(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Function(_rebuild_parameter),
}
# TorchScript's typed lists and type tags (torch/jit/_pickle.py): the value itself.
_SCRIPT_FUNCTIONS = {
    ("torch.jit._pickle", name): _Function(_as_list)
    for name in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")}
_SCRIPT_FUNCTIONS[("torch.jit._pickle", "restore_type_tag")] = _Function(_rebuild_parameter)
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")


class _Unpickler(pickle.Unpickler):
  """Unpickles data.pkl into records, refusing every global outside the allow-list."""

  def __init__(self, file, path: str, torchscript: bool):
    super().__init__(file)
    self.path, self.torchscript = path, torchscript
    self.script_classes: dict[tuple[str, str], type] = {}

  def find_class(self, module, name):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if (module, name) in _STATE_DICT_FUNCTIONS:
      return _STATE_DICT_FUNCTIONS[module, name]
    if module == "torch" and name in _TORCH_STORAGES:
      return _StorageType(_TORCH_STORAGES[name])
    if module == "torch" and name in _TORCH_DTYPES:
      return _StorageType(_TORCH_DTYPES[name])
    if module == "torch.storage" and name == "UntypedStorage":
      return _StorageType(np.uint8)
    if self.torchscript and (module, name) in _SCRIPT_FUNCTIONS:
      return _SCRIPT_FUNCTIONS[module, name]
    if self.torchscript and (module == "__torch__" or module.startswith("__torch__.")):
      return self._script_class(module, name)
    raise WeightFileError(
        f"{self.path}: holds {module[:100]}.{name[:100]}, which is not part of a state dict of "
        "tensors and is never run here. If the file comes from a source you trust: "
        + TO_STATE_DICT_HINT.format(path=self.path, stem=os.path.splitext(self.path)[0]))

  def _script_class(self, module: str, name: str) -> type:
    if (module, name) not in self.script_classes:
      if len(self.script_classes) >= MAX_SCRIPT_CLASSES:
        raise WeightFileError(f"{self.path}: a TorchScript archive with over "
                              f"{MAX_SCRIPT_CLASSES} classes (a damaged or crafted file).")
      self.script_classes[module, name] = type(
          "ScriptObject", (_ScriptObject,), {"__slots__": (), "qualname": (module, name)})
    return self.script_classes[module, name]

  def persistent_load(self, pid):
    # ("storage", storage type, key, location, element count), as torch.save and torch.jit.save
    # write it.
    if not (type(pid) is tuple and len(pid) == 5  # pylint: disable=unidiomatic-typecheck
            and pid[0] == "storage" and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str) and _STORAGE_KEY.fullmatch(pid[2])
            and _int(pid[4]) and pid[4] >= 0):
      raise WeightFileError(f"{self.path}: data.pkl has a storage record that torch does not "
                            "write (a damaged or crafted file).")
    return _Storage(pid[1].dtype, pid[2], pid[4])


def _check_opcodes(raw: bytes):
  """Raises ValueError (pickletools') or _Damaged unless `raw` parses as a pickle whose memo
  indices count up from 0, as every pickler writes them."""
  puts = 0
  for opcode, arg, _ in pickletools.genops(raw):
    if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
      if not 0 <= arg <= puts:
        raise _Damaged(f"data.pkl: memo index {arg} after {puts} memo entries")
      puts += 1
    elif opcode.name == "MEMOIZE":
      puts += 1


_CLASS_LINE = re.compile(r"class (\w+)\(")
_DECLARATION_LINE = re.compile(r"  __(parameters|buffers)__ = \[([^\]]*)\]")
_QUOTED = re.compile(r"\"(\w+)\"")


def _declarations(code: str) -> dict[str, list[str]]:
  """TorchScript code -> {class: its parameter and buffer names}, from the lines
  `  __parameters__ = ["weight", "bias", ]` and `  __buffers__ = [...]` (text only, never run)."""
  out, current = {}, None
  for line in code.splitlines():
    match = _CLASS_LINE.match(line)
    if match:
      current = out.setdefault(match.group(1), [])
      continue
    match = _DECLARATION_LINE.match(line)
    if match and current is not None:
      current.extend(_QUOTED.findall(match.group(2)))
  return out


class _ArchiveReader:
  """One torch.save / torch.jit.save zip archive, read within the module docstring's bounds."""

  def __init__(self, archive: zipfile.ZipFile, path: str):
    self.archive, self.path = archive, path
    self.read_limit = ARCHIVE_READ_FACTOR * os.path.getsize(path)
    self.bytes_read = 0
    self.storage_bytes = 0
    self.storages: dict[str, bytes] = {}
    self.arrays: dict[int, np.ndarray] = {}
    self.code: dict[str, dict[str, list[str]]] = {}
    self.prefix = ""  # the archive's folder: <prefix>/data.pkl
    self.name_limit = 0  # characters of TorchScript tensor names, set from data.pkl's size

  def member(self, name: str, limit: int) -> bytes:
    """The bytes of member `name` (KeyError if absent), refused before reading when it declares
    more than `limit` bytes or more than the archive's read budget has left."""
    info = self.archive.getinfo(name)
    if info.flag_bits & 0x1:
      raise WeightFileError(f"{self.path}: member {name} is encrypted.")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
      raise WeightFileError(f"{self.path}: member {name} uses zip compression method "
                            f"{info.compress_type}, which torch does not write.")
    if info.file_size > limit or self.bytes_read + info.file_size > self.read_limit:
      raise WeightFileError(
          f"{self.path}: member {name} declares {info.file_size} bytes, more than its archive "
          f"can hold ({ARCHIVE_READ_FACTOR}x the file's size in all; {limit} for this member): "
          "a zip bomb or a damaged file.")
    self.bytes_read += info.file_size
    with self.archive.open(info) as f:
      raw = f.read(info.file_size + 1)  # zipfile stops at the declared size and checks the CRC
    if len(raw) != info.file_size:
      raise WeightFileError(f"{self.path}: member {name} holds {len(raw)} bytes, not the "
                            f"{info.file_size} its zip entry declares.")
    return raw

  def load(self) -> dict[str, np.ndarray]:
    names = self.archive.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkl:
      raise WeightFileError(f"{self.path}: a zip archive without data.pkl: not a torch.save "
                            "file.")
    self.prefix = pkl[0].split("/")[0]
    if f"{self.prefix}/byteorder" in names:
      order = self.member(f"{self.prefix}/byteorder", 16)
      if order.strip() != b"little":
        raise WeightFileError(f"{self.path}: written on a {order.strip()[:10]!r}-endian machine; "
                              "this reader takes little-endian files (torch's default).")
    torchscript = any(n.startswith(f"{self.prefix}/code/") for n in names) or (
        f"{self.prefix}/constants.pkl" in names)
    raw = self.member(pkl[0], MAX_PICKLE_BYTES)
    _check_opcodes(raw)
    self.name_limit = 4 * len(raw) + _MIB
    obj = _Unpickler(io.BytesIO(raw), self.path, torchscript).load()
    if torchscript:
      tensors = self._module_tensors(obj)
    else:
      tensors = self._state_dict_tensors(obj)
    return self._arrays(tensors)

  def _state_dict_tensors(self, obj) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
      obj = obj["state_dict"]  # training checkpoints: {"epoch": ..., "state_dict": {...}}
    if not isinstance(obj, Mapping):
      raise WeightFileError(f"{self.path}: holds a {type(obj).__name__}, not a state dict.")
    for key, value in obj.items():
      if isinstance(value, _Tensor):
        if not isinstance(key, str):
          raise WeightFileError(f"{self.path}: a tensor named by a {type(key).__name__}, not a "
                                "string: not a state dict.")
        yield key, value

  def _module_tensors(self, root) -> Iterator[tuple[str, Any]]:
    """A TorchScript module tree -> (name, tensor) like its state_dict(): each module's parameters
    and buffers, then its submodules'. A module reached twice is read once."""
    if not isinstance(root, _ScriptObject):
      raise WeightFileError(f"{self.path}: a TorchScript archive holding a "
                            f"{type(root).__name__}, not a module.")
    seen, stack, chars = set(), [("", root)], 0
    while stack:
      prefix, module = stack.pop()
      if id(module) in seen:
        continue
      seen.add(id(module))
      if prefix.count(".") > MAX_MODULE_DEPTH:
        raise WeightFileError(f"{self.path}: modules nested deeper than {MAX_MODULE_DEPTH}.")
      attributes = getattr(module, "state", None)
      if not isinstance(attributes, dict):
        continue  # a class with its own __getstate__: no module attributes
      declared = self._declared(type(module).qualname)
      for name in (declared if declared is not None else list(attributes)):
        if isinstance(name, str) and isinstance(attributes.get(name), _Tensor):
          chars += len(prefix) + len(name)
          if chars > self.name_limit:  # long prefixes repeated: names quadratic in the file
            raise WeightFileError(f"{self.path}: its module tree names its tensors in over "
                                  f"{self.name_limit} characters (a damaged or crafted file).")
          yield prefix + name, attributes[name]
      stack.extend(reversed([(f"{prefix}{name}.", value) for name, value in attributes.items()
                             if isinstance(name, str) and isinstance(value, _ScriptObject)]))

  def _declared(self, qualname: tuple[str, str]) -> list[str] | None:
    """A TorchScript class's parameter and buffer names from its code file (None if the archive
    does not declare them)."""
    module, name = qualname
    member = f"{self.prefix}/code/{module.replace('.', '/')}.py"
    if member not in self.code:
      try:
        self.code[member] = _declarations(self.member(member, MAX_CODE_BYTES).decode())
      except KeyError:
        self.code[member] = {}
    return self.code[member].get(name)

  def _arrays(self, tensors: Iterator[tuple[str, Any]]) -> dict[str, np.ndarray]:
    out, returned = {}, 0
    for name, tensor in tensors:
      if id(tensor) not in self.arrays:
        self.arrays[id(tensor)] = self._array(name, tensor)
      out[name] = self.arrays[id(tensor)]
      returned += out[name].nbytes
      if returned > ARRAY_BYTES_FACTOR * self.storage_bytes + ARRAY_BYTES_SLACK:
        raise WeightFileError(
            f"{self.path}: its tensors (up to {name!r}) view {returned} bytes out of "
            f"{self.storage_bytes} stored, over {ARRAY_BYTES_FACTOR}x: overlapping or expanded "
            "views of a storage (a damaged or crafted file).")
    return out

  def _array(self, name: str, tensor: _Tensor) -> np.ndarray:
    storage, offset, size, stride = tensor.storage, tensor.offset, tensor.size, tensor.stride
    size = tuple(size) if isinstance(size, (tuple, list)) else size
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else stride
    if not (_int(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) <= MAX_NDIM
            and all(_int(x) and x >= 0 for x in (offset,) + size + stride)
            and not _too_big(size, storage.dtype.itemsize)):
      raise WeightFileError(
          f"{self.path}: tensor {name!r} has offset {str(offset)[:30]}, sizes {str(size)[:80]} "
          f"and strides {str(stride)[:80]}, not non-negative ints (a damaged or crafted file).")
    flat = self._storage(name, storage)
    numel = math.prod(size)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if numel else offset - 1
    if last >= flat.size or offset > flat.size:
      raise WeightFileError(
          f"{self.path}: tensor {name!r} (offset {offset}, sizes {size}, strides {stride}) reaches "
          f"past the end of its storage {storage.key} of {flat.size} elements (a damaged or "
          "crafted file).")
    if numel == 0:
      return np.zeros(size, flat.dtype)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * flat.dtype.itemsize for s in stride),
        writeable=False)
    if view.flags.c_contiguous:
      return flat[offset:offset + numel].reshape(size)  # the same bytes, a plain view
    if view.nbytes > ARRAY_BYTES_FACTOR * self.storage_bytes + ARRAY_BYTES_SLACK:
      raise WeightFileError(f"{self.path}: tensor {name!r} expands {flat.nbytes} stored bytes "
                            f"to {view.nbytes} (a damaged or crafted file).")
    return np.array(view)  # own the memory, C order

  def _storage(self, name: str, storage: _Storage) -> np.ndarray:
    expected = storage.numel * storage.dtype.itemsize
    member = f"{self.prefix}/data/{storage.key}"
    if storage.key not in self.storages:
      try:
        declared = self.archive.getinfo(member).file_size
      except KeyError:
        raise WeightFileError(f"{self.path}: storage {storage.key} of tensor {name!r} is missing "
                              "(a damaged file).") from None
      if declared == expected:  # checked before reading: no storage is bigger than declared
        self.storages[storage.key] = self.member(member, expected)
        self.storage_bytes += expected
    else:
      declared = len(self.storages[storage.key])
    if declared != expected:
      raise WeightFileError(
          f"{self.path}: storage {storage.key} of tensor {name!r} holds {declared} bytes, not "
          f"the {storage.numel} elements of {storage.dtype.itemsize} bytes its record declares "
          "(a damaged file).")
    return np.frombuffer(self.storages[storage.key], storage.dtype)


def read_torch_zip(path: str) -> dict[str, np.ndarray]:
  """A `torch.save(state_dict)` file or a TorchScript archive -> {name: array}, without torch and
  without running anything from the file (see the module docstring)."""
  with open(path, "rb") as f:
    magic = f.read(4)
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    if magic.startswith(b"PK"):
      raise WeightFileError(f"{path}: a damaged zip archive (truncated download?).") from None
    raise WeightFileError(
        f"{path}: not a zip archive; files from torch < 1.6 (legacy pickle format) are not read "
        "(their loader runs code from the file). Where torch is installed, load it with "
        "torch.load(path, weights_only=True) and save it again, or convert it to .safetensors."
    ) from None
  except _PARSE_ERRORS as e:
    raise _unreadable(path, e) from None
  with archive:
    try:
      return _ArchiveReader(archive, path).load()
    except WeightFileError:
      raise
    except _PARSE_ERRORS as e:
      raise _unreadable(path, e) from None


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors`, torch.save `.pt`/`.pth`/`.bin` or TorchScript file -> {name: numpy array},
  never running code from the file; WeightFileError naming the file when it cannot be read."""
  if not os.path.isfile(path):
    raise WeightFileError(f"{path}: no such file.")
  if path.endswith(".safetensors"):
    return read_safetensors(path)[0]
  state = read_torch_zip(path)
  # open_clip trains some models with a "module." prefix (DistributedDataParallel).
  if state and all(k.startswith("module.") for k in state):
    state = {k[len("module."):]: v for k, v in state.items()}
  return state
