"""Tar headers parsed with bounds: the one parser of tar shards (ustar, GNU and pax formats).

A tar file is a sequence of 512-byte headers, each followed by its member's data padded to whole
blocks, and ends with an end-of-archive marker: zero blocks (GNU tar and Python's tarfile write
two; one is accepted, as GNU tar does). `TarWalk` goes through the headers and yields each regular
file member as `Member(name, offset, size)`, the offset and size of its data; it reads nothing but
headers and the (bounded) data of GNU long-name and pax extended headers, so a caller reads or
skips member data itself: by offset (random access, data/webdataset.py) or in order (a stream;
`read_at` is then only ever asked for increasing offsets).

The first problem stops the walk with a `Damage(kind, offset, reason)`; the members before it
stand. Kinds:

- not_a_tar: shorter than one header, or its first header is not a tar header (wrong checksum).
- corrupt_header: a later header whose checksum does not match; a numeric field that is not a
  number; a negative size (it would point the next header back at this one, so that a walk never
  ends); a pax extended header whose records are malformed (a length of 0, not a number, too short
  for its own digits, past the end of the data; a record that is not key=value or not ended by a
  newline); a GNU long name or pax header larger than MAX_META_BYTES.
- truncated: a header or a member's data runs past the end of the file, or the file ends without
  an end-of-archive marker (a shard cut exactly at a header boundary loses later members silently
  otherwise).
- cannot_open / read_error: set by `scan_file` when the file cannot be opened or read.

Every header's successor lies strictly after it, so a walk ends after at most size/512 headers
and reads at most MAX_META_BYTES at once. No error escapes a walk: malformed input is a Damage.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Callable, Iterator, NamedTuple

from rankclip_jax.errors import UserError

BLOCK = 512
ZERO_BLOCK = b"\0" * BLOCK
# Largest GNU long name or pax extended header read: a path (Linux allows 4 KiB) and a few
# attributes take well under 1 KiB; a larger one is damage, never a large read.
MAX_META_BYTES = 1 << 20
REGULAR_TYPES = (b"0", b"\0", b"7")  # 7: contiguous file, stored like a regular one
# Headers that describe the next member rather than being one.
_LONG_NAME, _PAX, _PAX_GLOBAL, _LONG_LINK = b"L", b"x", b"g", b"K"

DAMAGE_KINDS = ("cannot_open", "read_error", "not_a_tar", "corrupt_header", "truncated")


class Member(NamedTuple):  # a tuple: cheap to make, one per member of a corpus
  name: str
  offset: int  # of the data, in bytes from the start of the file
  size: int


@dataclasses.dataclass(frozen=True)
class Damage:
  """Where a tar file stops being readable: kind (DAMAGE_KINDS), byte offset, and why."""

  kind: str
  offset: int
  reason: str

  @property
  def short(self) -> str:
    """A few words (at most 48 bytes): '<what> at byte <offset>', e.g. 'cut short at byte 1536'."""
    return f"{_SHORT[self.kind]} at byte {self.offset}"

  def describe(self, path: str) -> str:
    """One line naming the file: '<path> is cut short at byte 1536 (<reason>)'."""
    where = "" if self.kind in ("cannot_open", "not_a_tar") else f" at byte {self.offset}"
    return f"{path} {_WHAT[self.kind]}{where} ({self.reason})"

  def __str__(self):
    return f"{self.short} ({self.reason})"


_SHORT = {"cannot_open": "cannot be opened", "read_error": "read error",
          "not_a_tar": "not a tar file", "corrupt_header": "corrupt header",
          "truncated": "cut short"}
_WHAT = {"cannot_open": "cannot be opened", "read_error": "has a read error",
         "not_a_tar": "is not a tar file", "corrupt_header": "has a corrupt header",
         "truncated": "is cut short"}


class TarFormatError(UserError, ValueError):
  """Malformed tar input at a byte offset. `TarWalk` turns it into a Damage: it reaches no user,
  and any reader that lets one through must name the file."""

  def __init__(self, kind: str, offset: int, reason: str):
    super().__init__(f"{kind} at byte {offset}: {reason}")
    self.damage = Damage(kind, offset, reason)


def parse_number(field: bytes) -> int:
  """A numeric header field: NUL/space-terminated octal, or GNU base-256 (first byte 0x80 for a
  positive number, 0xFF for a negative one in two's complement). ValueError if it is neither."""
  if field and field[0] == 0xFF:
    return int.from_bytes(field, "big", signed=True)
  if field and field[0] & 0x80:
    return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
  text = field.split(b"\0", 1)[0].strip(b" ")
  if not text:
    return 0
  if text.translate(None, b"01234567"):  # int(..., 8) would take signs, "_" and white space too
    sign = "negative, " if text[:1] == b"-" else ""
    raise ValueError(f"{sign}not an octal number: {text[:16]!r}")
  return int(text, 8)


def checksum_ok(header: bytes) -> bool:
  """The stored checksum equals the header's byte sum with the checksum field read as spaces
  (unsigned bytes, or signed as some old tar programs summed them)."""
  try:
    stored = parse_number(header[148:156])
  except ValueError:
    return False
  unsigned = sum(header) - sum(header[148:156]) + 8 * 32
  if stored == unsigned:
    return True
  return stored == unsigned - 256 * sum(b >= 128 for b in header[:148] + header[156:])


def header_name(header: bytes) -> str:
  """The member name a header holds itself (ustar: prefix + '/' + name)."""
  name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
  if header[257:262] == b"ustar":
    prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    if prefix:
      name = prefix + "/" + name
  return name


def parse_pax(data: bytes, offset: int) -> dict[bytes, bytes]:
  """The records of a pax extended header ('<length> <key>=<value>\\n', the length counting the
  whole record in decimal); NUL padding after the last record is allowed. Raises TarFormatError
  (corrupt_header at `offset`, the header's) for any malformed record."""
  records, pos, n = {}, 0, len(data)

  def bad(reason):
    return TarFormatError("corrupt_header", offset, f"pax record at data byte {pos}: {reason}")

  while pos < n:
    if data[pos] == 0:
      if data[pos:].strip(b"\0"):
        raise bad("bytes after NUL padding")
      break
    space = data.find(b" ", pos, min(n, pos + 21))  # 20 digits: far beyond any real length
    digits = data[pos:space] if space > pos else b""
    if not digits.isdigit():  # bytes.isdigit: ASCII digits only
      raise bad("its length is not a number")
    length = int(digits)
    if length < len(digits) + 4:  # digits, space, "k=", newline
      raise bad(f"length {length} is too short for a record")
    end = pos + length
    if end > n:
      raise bad(f"length {length} runs past the end of the {n}-byte data")
    if data[end - 1] != 0x0A:
      raise bad("not ended by a newline")
    key, eq, value = data[space + 1:end - 1].partition(b"=")
    if not eq or not key:
      raise bad("not key=value")
    records[key] = value
    pos = end
  return records


def padded(size: int) -> int:
  return (size + BLOCK - 1) // BLOCK * BLOCK


class TarWalk:
  """The regular file members of a tar, in order, parsed with bounds (see the module docstring).

  read_at(offset, n) -> up to n bytes at offset (fewer only at the end of the file).
  file_size: the file's size, or None when unknown (a stream): a member's data past the end is
  then found by whoever reads it, and the walk ends with `truncated` at its next header.
  After iteration, `damage` is None for a whole archive, else where and why it stopped.
  """

  def __init__(self, read_at: Callable[[int, int], bytes], file_size: int | None = None,
               start: int = 0):
    self._read_at = read_at
    self.file_size = file_size
    self.damage: Damage | None = None
    self._start = start  # a header's offset: 0, or a member_start from an earlier walk
    self._offset = start  # of the header being parsed
    # Offset of the first header of the member last yielded (its GNU long name or pax header, if
    # it has one): a walk started there (`start`) yields that member again, and the rest.
    self.member_start = start

  def __iter__(self) -> Iterator[Member]:
    try:
      yield from self._walk()
    except TarFormatError as e:
      self.damage = e.damage
    except ValueError as e:  # none is expected: any other parsing error is damage there too
      self.damage = Damage("corrupt_header", self._offset, f"{type(e).__name__}: {e}")

  def _read_meta(self, offset: int, data_offset: int, size: int, what: str) -> bytes:
    if size > MAX_META_BYTES:
      raise TarFormatError("corrupt_header", offset,
                           f"{what} of {size} bytes (more than {MAX_META_BYTES})")
    data = self._read_at(data_offset, size)
    if len(data) < size:
      raise TarFormatError("truncated", offset,
                           f"{what} cut short ({len(data)} of {size} bytes)")
    return data

  def _walk(self) -> Iterator[Member]:
    offset = self._start
    long_name, pax = None, {}
    first_header = None  # of the member being assembled
    while True:
      self._offset = offset
      if first_header is None:
        first_header = offset
      header = self._read_at(offset, BLOCK)
      if len(header) < BLOCK:
        if offset == 0:
          raise TarFormatError("not_a_tar", 0, f"{len(header)} bytes, less than one tar header")
        raise TarFormatError("truncated", offset, "the file ends inside a header" if header else
                             "the file ends without an end-of-archive marker")
      if header == ZERO_BLOCK:
        return  # end-of-archive marker
      if not checksum_ok(header):
        if offset == 0:
          raise TarFormatError("not_a_tar", 0, "its first block is not a tar header")
        raise TarFormatError("corrupt_header", offset, "checksum does not match")
      try:
        size = parse_number(header[124:136])
      except ValueError as e:
        raise TarFormatError("corrupt_header", offset, f"size field: {e}") from None
      if b"size" in pax:  # a pax size (> 8 GiB, or any) replaces the header's
        if not pax[b"size"].isdigit():
          raise TarFormatError("corrupt_header", offset, "pax size is not a number")
        size = int(pax[b"size"])
      if size < 0:
        raise TarFormatError("corrupt_header", offset, f"negative size {size}")
      data_offset = offset + BLOCK
      if self.file_size is not None and data_offset + size > self.file_size:
        raise TarFormatError("truncated", offset, f"member data cut short "
                             f"({max(self.file_size - data_offset, 0)} of {size} bytes)")
      typeflag = header[156:157]
      if typeflag == _LONG_NAME:  # GNU: the next member's name is this member's data
        data = self._read_meta(offset, data_offset, size, "GNU long name")
        long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
      elif typeflag == _PAX:  # pax extended header for the next member
        pax = parse_pax(self._read_meta(offset, data_offset, size, "pax header"), offset)
        if b"path" in pax:
          long_name = pax[b"path"].decode("utf-8", "replace")
      elif typeflag in REGULAR_TYPES:
        self.member_start = first_header
        yield Member(long_name if long_name is not None else header_name(header), data_offset,
                     size)
        long_name, pax, first_header = None, {}, None
      elif typeflag not in (_PAX_GLOBAL, _LONG_LINK):  # directories, links: not example data
        long_name, pax, first_header = None, {}, None
      offset = data_offset + padded(size)  # > offset: every walk ends


@dataclasses.dataclass
class Scan:
  members: list[Member]
  damage: Damage | None


class NotRegularFile(OSError):
  """The path is a FIFO, a device, a directory: nothing a reader may read."""


def open_regular(path: str) -> tuple[int, int]:
  """A read-only descriptor of the regular file at `path`, and its size. Opened with O_NONBLOCK so
  that a FIFO returns at once (a blocking open would wait for a writer for ever), then refused
  (NotRegularFile), as is anything else that is not a regular file (a device never ends); other
  failures raise their OSError. The caller closes the descriptor."""
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  try:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
      raise NotRegularFile(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd, st.st_size
  except BaseException:
    os.close(fd)
    raise


def scan_file(path: str) -> Scan:
  """Every regular file member of the tar file at `path` and where it is damaged, if it is: a
  file that cannot be opened or read is damage too (cannot_open, read_error), never an error.
  Only regular files are read (a FIFO would block forever, a device never end)."""
  try:
    fd, size = open_regular(path)
  except NotRegularFile:
    return Scan([], Damage("cannot_open", 0, "not a regular file"))
  except OSError as e:
    return Scan([], Damage("cannot_open", 0, f"{type(e).__name__}: {e.strerror or e}"))
  members, position = [], 0
  try:
    walk = TarWalk(lambda offset, n: os.pread(fd, n, offset), size)
    for member in walk:
      position = member.offset
      members.append(member)
  except OSError as e:
    return Scan(members, Damage("read_error", position, f"{type(e).__name__}: {e}"))
  finally:
    os.close(fd)
  return Scan(members, walk.damage)
