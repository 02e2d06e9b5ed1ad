"""Reading pickles and torch.save files from untrusted sources: nothing stored in them runs, and
time and memory stay bounded.

- `unpickle`: the opcodes are walked first (pickletools.genops) without building anything, and a
  file is refused that has too many of them, nests deeper than MAX_DEPTH (CPython hashes nested
  tuples recursively in C: 200,000 levels crash it), uses far memo indices (the C unpickler sizes
  its memo by the largest index) or holds many huge integers (dict keys that all collide make
  loading quadratic). Only then an Unpickler runs that resolves the globals it is given, nothing
  else.
- `read_torch_file`: torch.save files, zip and legacy format, read with that unpickler; every
  tensor is backed by bytes present in the file. torch.load is never called: before torch 2.6 it
  ran a TorchScript archive's code even with weights_only=True.
- `NUMPY_GLOBALS`: stand-ins for the numpy globals of pickled arrays and scalars. They accept
  plain numeric dtypes only and copy bytes (np.frombuffer(...).copy()); the real numpy.dtype and
  ndarray.__setstate__ would let a file forge an object dtype or an item size, and so read and
  write memory outside an array.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import LatentFitError

MAX_OPCODES = 2_000_000      # a 1024 px StyleGAN2 pickle (G, D, G_ema) has about 60,000
MAX_DEPTH = 100              # of nested containers and calls; such pickles reach about 35
MAX_HUGE_INTS = 64           # integers of 2**60 and more (the only ones whose hashes collide at will)
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C   # first object of a torch.save file in the legacy format


class Refused(LatentFitError):
    """The file asks for something latent-fit never does (a global, a dtype, TorchScript)."""


_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "READONLY_BUFFER"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a FIFO or device never blocks or
    streams forever, and no buffer is larger than the file)."""
    if Path(path).exists() and not Path(path).is_file():   # opening a FIFO would wait for a writer
        raise LatentFitError("not a regular file")
    with open(path, "rb") as f:
        size = min(os.fstat(f.fileno()).st_size, limit)
        data = f.read(size + 1)
        if len(data) <= size:
            return data
        grown = bytearray(data)   # the file grew, or its size is not told (/proc)
        while len(grown) <= limit:
            more = f.read(1 << 20)
            if not more:
                return bytes(grown)
            grown += more
    raise LatentFitError(f"larger than {limit / 2 ** 30:g} GiB, the most latent-fit reads")


def check_opcodes(data: bytes, start: int = 0) -> int:
    """Walk the pickle at data[start:] without building anything; returns where it ends.
    Refuses too many opcodes, deep nesting, far memo indices and many huge integers."""
    f = io.BytesIO(data)
    f.seek(start)
    try:
        return _walk(pickletools.genops(f))
    except LatentFitError:
        raise
    except Exception as e:   # genops on damaged data: unknown opcodes, truncated arguments
        raise LatentFitError(f"not a valid pickle ({describe(e)})") from None


def _walk(ops) -> int:
    stack: list[int] = []     # the nesting depth of each stack item
    marks: list[int] = []     # stack lengths at each MARK
    memo: dict[int, int] = {}
    huge = 0
    for n, (op, arg, pos) in enumerate(ops):
        if n >= MAX_OPCODES:
            raise LatentFitError(f"more than {MAX_OPCODES:,} pickle opcodes")
        name = op.name
        if isinstance(arg, int) and abs(arg) >= 2 ** 60 and name not in _PUT | _GET:
            huge += 1
            if huge > MAX_HUGE_INTS:
                raise LatentFitError(f"more than {MAX_HUGE_INTS} huge integers")
        if name in _PUT or name == "MEMOIZE":
            index = len(memo) if name == "MEMOIZE" else arg
            if index > MAX_OPCODES or len(stack) <= (marks[-1] if marks else 0):
                raise LatentFitError(f"bad memo index {index} at byte {pos}")
            memo[index] = stack[-1]
        elif name in _GET:
            if arg not in memo:
                raise LatentFitError(f"memo index {arg} is read before it is written (byte {pos})")
            stack.append(memo[arg])
        elif name == "POP" and marks and marks[-1] == len(stack):
            marks.pop()
        else:
            _simulate(op, stack, marks, pos)
        if stack and stack[-1] > MAX_DEPTH:
            raise LatentFitError(f"nested more than {MAX_DEPTH} levels deep")
        if name == "STOP":
            return pos + 1
    raise LatentFitError("pickle data was truncated")


def _simulate(op, stack: list[int], marks: list[int], pos: int) -> None:
    """Pop what `op` takes from the simulated stack and push what it makes, with its depth."""
    before, after = op.stack_before, op.stack_after
    above_mark: list[int] = []
    n_fixed = len(before)
    if pickletools.markobject in before:
        if not marks:
            raise LatentFitError(f"{op.name} without a MARK at byte {pos}")
        m = marks.pop()
        above_mark, stack[m:] = stack[m:], []
        n_fixed = before.index(pickletools.markobject)
    if len(stack) - n_fixed < (marks[-1] if marks else 0):
        raise LatentFitError(f"{op.name} on an empty stack at byte {pos}")
    fixed = stack[len(stack) - n_fixed:] if n_fixed else []
    del stack[len(stack) - n_fixed:]
    if op.name == "MARK":
        marks.append(len(stack))
    elif op.name in _IN_PLACE:   # the container stays, holding the other items
        stack.append(max([fixed[0]] + [d + 1 for d in fixed[1:] + above_mark]))
    else:
        stack.extend([max(fixed + above_mark, default=-1) + 1] * len(after))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, find_class, persistent_load=None):
        super().__init__(file)
        self._find = find_class
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        return self._find(module, name)


def refuse_globals(module: str, name: str):
    raise Refused(f"refusing to load global '{module}.{name}'")


def unpickle(data: bytes, find_class=refuse_globals, persistent_load=None, start: int = 0):
    """(object, end) of the pickle at data[start:], its opcodes checked first; globals come
    from find_class(module, name) only."""
    end = check_opcodes(data, start)
    f = io.BytesIO(data)
    f.seek(start)
    try:
        return _Unpickler(f, find_class, persistent_load).load(), end
    except LatentFitError:
        raise
    except Exception as e:   # whatever damaged data makes the unpickler or the stand-ins raise
        raise LatentFitError(f"not a valid pickle ({describe(e)})") from None


def describe(e: BaseException) -> str:
    """An exception as a short line for a message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]


# ---------------------------------------------------------------- numpy arrays and scalars

_NUMERIC = {f"{k}{n}" for k, sizes in (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248")) for n in sizes} \
    | {"c8", "c16"}


class _DType:
    """Stand-in for numpy.dtype(name, align, copy) and its pickled state: plain numbers only."""

    def __init__(self, name, align=False, copy=False):
        if name not in _NUMERIC:
            raise Refused(f"refusing numpy dtype {str(name)[:20]!r} (only plain numbers)")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:7] == (None, None, None, -1, -1)):
            raise Refused("refusing a numpy dtype with fields, a subarray or an item size")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _scalar(dtype, data):   # numpy.core.multiarray.scalar
    if not isinstance(dtype, _DType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise LatentFitError("malformed numpy scalar")
    return np.frombuffer(data, dtype.dtype).copy()[0]


class NDArray:
    """Stand-in for a pickled numpy array (numpy.ndarray and _reconstruct): `array` holds a
    copy of the file's bytes once its state is set."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
                and isinstance(state[2], _DType) and isinstance(state[4], bytes)
                and all(type(s) is int and s >= 0 for s in state[1])):
            raise LatentFitError("malformed numpy array")
        shape, dtype, fortran, data = state[1], state[2].dtype, state[3], state[4]
        if math.prod(shape) * dtype.itemsize != len(data):
            raise LatentFitError(f"numpy array of shape {list(shape)[:8]} does not match its {len(data)} bytes")
        self.array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _reconstruct(cls, shape, typecode):   # numpy.core.multiarray._reconstruct
    if cls is not NDArray:
        raise Refused("refusing a numpy array subclass")
    return NDArray()


NUMPY_GLOBALS = {
    ("numpy", "dtype"): _DType,
    ("numpy", "ndarray"): NDArray,
    **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_reconstruct"): _reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
}

# ---------------------------------------------------------------- torch tensors and files


class Storage:
    """A torch storage read from a file: `data`, a 1-D tensor of its dtype."""

    def __init__(self, data: torch.Tensor):
        self.data = data


class _StorageType:
    """Stand-in for torch.FloatStorage and the like: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16,
                   "BFloat16": torch.bfloat16, "Long": torch.int64, "Int": torch.int32,
                   "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8, "Bool": torch.bool,
                   "Untyped": torch.uint8}


def rebuild_tensor(storage, offset, size, stride, *_):   # torch._utils._rebuild_tensor(_v2); hooks dropped
    """A view of the storage; torch checks that it stays inside it."""
    if not (isinstance(storage, Storage) and type(offset) is int and isinstance(size, tuple)
            and isinstance(stride, tuple) and all(type(s) is int for s in size + stride)):
        raise LatentFitError("malformed tensor")
    return storage.data.as_strided(size, stride, offset)


def rebuild_parameter(data, *_):   # torch._utils._rebuild_parameter(_with_state): the plain tensor
    if not isinstance(data, torch.Tensor):
        raise LatentFitError("malformed parameter")
    return data


TORCH_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", f"{k}Storage"): _StorageType(d) for k, d in _STORAGE_DTYPES.items()},
}


def _storage_id(pid) -> tuple[str, torch.dtype, int]:
    """(key, dtype, numel) of a persistent id ('storage', type, key, location, numel[, None])."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
            and type(pid[4]) is int and pid[4] >= 0 and pid[5:] in ((), (None,))):
        raise LatentFitError("malformed tensor storage reference")
    return pid[2], pid[1].dtype, pid[4]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def read_torch_file(data: bytes, globals_: dict = TORCH_GLOBALS):
    """The object of a torch.save file (zip or legacy format) whose globals are in `globals_`."""
    def find_class(module, name):
        if (module, name) in globals_:
            return globals_[module, name]
        refuse_globals(module, name)
    if data[:4] == b"PK\x03\x04":
        return _read_torch_zip(data, find_class)
    return _read_torch_legacy(data, find_class)


def _read_torch_zip(data: bytes, find_class):
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LatentFitError(f"not a readable zip file ({describe(e)})") from None
    tops = [n[:-len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise LatentFitError("a zip file but not a torch.save archive (no data.pkl)")
    top = tops[0]
    if top + "constants.pkl" in names or any(n.startswith(top + "code/") for n in names):
        raise Refused("a TorchScript archive, which runs code when loaded; if you trust it, "
                             "name it .ts or pass --torchscript")

    def record(name: str) -> bytes:
        try:
            info = z.getinfo(top + name)
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > len(data):
                raise LatentFitError(f"zip entry {name[:40]!r} is compressed or larger than the file")
            return z.read(info)
        except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise LatentFitError(f"zip entry {name[:40]!r} unreadable ({describe(e)})") from None

    if top + "byteorder" in names and record("byteorder") != b"little":
        raise LatentFitError("a big-endian torch file")
    storages: dict[str, Storage] = {}

    def persistent_load(pid):
        key, dtype, numel = _storage_id(pid)
        if key not in storages:
            raw = record(f"data/{key}")
            if len(raw) != numel * _element_size(dtype):
                raise LatentFitError(f"tensor data {key[:20]!r} has {len(raw)} bytes, not {numel} {dtype}")
            storages[key] = Storage(torch.frombuffer(bytearray(raw), dtype=dtype) if raw
                                    else torch.empty(0, dtype=dtype))
        return storages[key]

    return unpickle(record("data.pkl"), find_class, persistent_load)[0]


def _read_torch_legacy(data: bytes, find_class):
    """Header pickles (magic, protocol, sys_info), the object, its storage keys, then per
    storage an int64 element count and the bytes. Storages are allocated as they are named,
    never beyond the file's own size, and filled from the data section."""
    magic, pos = unpickle(data)
    if magic != LEGACY_TORCH_MAGIC:
        raise LatentFitError("not a torch.save file")
    protocol, pos = unpickle(data, start=pos)
    sys_info, pos = unpickle(data, start=pos)
    if protocol != 1001 or not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise LatentFitError("an unsupported (or big-endian) torch.save format")
    storages: dict[str, Storage] = {}
    budget = [len(data)]

    def persistent_load(pid):
        key, dtype, numel = _storage_id(pid)
        if key not in storages:
            budget[0] -= numel * _element_size(dtype)
            if budget[0] < 0:
                raise LatentFitError("declares more tensor data than the file holds")
            storages[key] = Storage(torch.zeros(numel, dtype=dtype))
        return storages[key]

    obj, pos = unpickle(data, find_class, persistent_load, start=pos)
    keys, pos = unpickle(data, start=pos)
    if not isinstance(keys, list) or sorted(keys) != sorted(storages):
        raise LatentFitError("its storage keys do not match its tensors")
    for key in keys:
        st = storages[key].data
        numel = int.from_bytes(data[pos:pos + 8], "little", signed=True)
        nbytes = st.numel() * st.element_size()
        chunk = data[pos + 8:pos + 8 + nbytes]
        if numel != st.numel() or len(chunk) != nbytes:
            raise LatentFitError("tensor data truncated or of the wrong size")
        if nbytes:
            st.view(torch.uint8).copy_(torch.frombuffer(bytearray(chunk), dtype=torch.uint8))
        pos += 8 + nbytes
    return obj


def load_storage_bytes(data: bytes) -> Storage:
    """torch.storage._load_from_bytes: one storage saved by torch.save."""
    obj = read_torch_file(data)
    if not isinstance(obj, Storage):
        raise LatentFitError("malformed tensor storage")
    return obj
