"""Reading pickles and torch.save files from untrusted sources: nothing stored in them runs, and
time and memory stay bounded by the file's size.

- `Budget`: one per load, set from the file's size. Every pickle opcode (memo reads included),
  every item a stand-in takes and every node a later walk visits spends an object; every byte
  copied into a tensor or array spends a byte of the file. Nested files (a storage pickled as
  torch.save bytes) spend from the same budget.
- `unpickle`: the opcodes are walked first (pickletools.genops) without building anything, and a
  file is refused that has more opcodes than its budget, nests deeper than MAX_DEPTH (CPython
  hashes nested tuples recursively in C: 200,000 levels crash it), uses far memo indices or holds
  many huge integers. Then pickle's own Python unpickler runs with guarded opcodes: it resolves
  only the globals it is given; calls a container type only with a list (never an iterator such
  as a tensor); sets state (BUILD) only on latent-fit's stand-ins, never on a class, a function
  or a tensor; and lets only text and integers below 2**60 be dict keys or set items, whose
  hashes a file cannot make collide.
- `read_torch_file`: torch.save files, zip and legacy format, read with that unpickler; every
  tensor is a view inside a storage whose bytes are in the file, once: zip entries that overlap
  are refused. torch.load is never called: before torch 2.6 it ran a TorchScript archive's code
  even with weights_only=True.
- `numpy_globals`, `torch_globals`: stand-ins made fresh for each load (no state is shared
  between loads). numpy dtypes may be plain numbers only and arrays copy bytes; the real
  numpy.dtype and ndarray.__setstate__ would let a file forge an object dtype or an item size,
  and so read and write memory outside an array.
"""

from __future__ import annotations

import collections
import io
import itertools
import math
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import LatentFitError

MAX_OPCODES = 2_000_000  # a 1024 px StyleGAN2 pickle (G, D, G_ema) has about 60,000
BASE_OBJECTS = 200_000  # objects any file may make; a larger file one more per BYTES_PER_OBJECT
BYTES_PER_OBJECT = 64
MAX_KEY_INT = 2**60  # integer keys below it hash to themselves: no collisions
MAX_DEPTH = 100  # of nested containers and calls; such pickles reach about 35
MAX_HUGE_INTS = 64  # integers of 2**60 and more (the only ones whose hashes collide at will)
LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a torch.save file in the legacy format


class Refused(LatentFitError):
    """The file asks for something latent-fit never does (a global, a dtype, TorchScript)."""


class Budget:
    """What one load may create: `objects` (every pickle opcode, memo reads included, every
    item a stand-in takes, every node a walk visits) and `bytes` (every byte copied into a
    tensor, array or bytes object), both set from the file's size and shared by everything the
    load reads."""

    def __init__(self, file_bytes: int):
        self.objects = self.max_objects = min(MAX_OPCODES, BASE_OBJECTS + file_bytes // BYTES_PER_OBJECT)
        self.bytes = self.max_bytes = 2 * file_bytes

    def spend(self, n: int = 1) -> None:
        self.objects -= n
        if self.objects < 0:
            raise LatentFitError(f"makes more than {self.max_objects:,} objects, the most a file of its size may hold")

    def spend_bytes(self, n: int) -> None:
        self.bytes -= n
        if self.bytes < 0:
            raise LatentFitError(
                f"its tensors and arrays need more than {self.max_bytes:,} bytes, twice what the file holds"
            )


_IN_PLACE = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "READONLY_BUFFER"}
_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}
_LEAVES = {
    op.name
    for op in pickletools.opcodes  # push one new object of depth 0 (the common case)
    if not op.stack_before and len(op.stack_after) == 1 and op.name != "MARK"
} - _GET


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (a FIFO or device never blocks or
    streams forever, and no buffer is larger than the file)."""
    if Path(path).exists() and not Path(path).is_file():  # opening a FIFO would wait for a writer
        raise LatentFitError("not a regular file")
    with open(path, "rb") as f:
        size = min(os.fstat(f.fileno()).st_size, limit)
        data = f.read(size + 1)
        if len(data) <= size:
            return data
        grown = bytearray(data)  # the file grew, or its size is not told (/proc)
        while len(grown) <= limit:
            more = f.read(1 << 20)
            if not more:
                return bytes(grown)
            grown += more
    raise LatentFitError(f"larger than {limit / 2**30:g} GiB, the most latent-fit reads")


def check_opcodes(data: bytes, start: int = 0, limit: int = MAX_OPCODES) -> int:
    """Walk the pickle at data[start:] without building anything; returns where it ends.
    Refuses more than `limit` opcodes, deep nesting, far memo indices and many huge integers."""
    f = io.BytesIO(data)
    f.seek(start)
    try:
        return _walk(pickletools.genops(f), limit)
    except LatentFitError:
        raise
    except Exception as e:  # genops on damaged data: unknown opcodes, truncated arguments
        raise LatentFitError(f"not a valid pickle ({describe(e)})") from None


def _walk(ops, limit: int) -> int:
    stack: list[int] = []  # the nesting depth of each stack item
    marks: list[int] = []  # stack lengths at each MARK
    memo: dict[int, int] = {}
    huge = 0
    for n, (op, arg, pos) in enumerate(ops):
        if n >= limit:
            raise LatentFitError(f"more than {limit:,} pickle opcodes, the most a file of its size may hold")
        name = op.name
        if isinstance(arg, int) and abs(arg) >= 2**60 and name not in _PUT | _GET:
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
        elif name in _LEAVES:
            stack.append(0)
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
    fixed = stack[len(stack) - n_fixed :] if n_fixed else []
    del stack[len(stack) - n_fixed :]
    if op.name == "MARK":
        marks.append(len(stack))
    elif op.name in _IN_PLACE:  # the container stays, holding the other items
        stack.append(max([fixed[0]] + [d + 1 for d in fixed[1:] + above_mark]))
    else:
        stack.extend([max(fixed + above_mark, default=-1) + 1] * len(after))


class _Unpickler(pickle._Unpickler):
    """pickle's Python unpickler with every opcode charged to the load's budget, and the
    opcodes that call, set state, add items or hash them kept to what network files need."""

    def __init__(self, file, find_class, persistent_load, budget: Budget):
        super().__init__(file)
        self._find, self.budget = find_class, budget
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        return self._find(module, name)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def _instantiate(self, klass, args):  # INST, OBJ
        self.append(self._call(klass, tuple(args)))

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args)

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        self.stack[-1] = self._new(self.stack[-1], args, kwargs)

    def _new(self, cls, args, kwargs=None):
        if not isinstance(cls, type) or args != () or kwargs:
            raise Refused("refusing to create an object with arguments (NEWOBJ)")
        return cls.__new__(cls)

    def _call(self, func, args):
        """func(*args); a container type only from a list of allowed items, counted first."""
        if type(args) is not tuple:
            raise LatentFitError("malformed call (its arguments are not a tuple)")
        if not (isinstance(func, type) and issubclass(func, (set, frozenset, dict, list, tuple))):
            return func(*args)  # an allowlisted function or stand-in: it checks its arguments
        if args == ():
            return func()
        if len(args) != 1 or type(args[0]) not in (list, tuple):
            raise Refused(f"refusing to build a {func.__name__} from a {type(args[0]).__name__}")
        items = args[0]
        self.budget.spend(len(items))
        keys = (
            [i[0] if type(i) in (list, tuple) and len(i) == 2 else None for i in items]
            if issubclass(func, dict)
            else items
        )
        _check_keys(keys, func.__name__)
        return func(items)

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if not getattr(type(inst), "takes_pickled_state", False):
            raise Refused(f"refusing to set the state of a {type(inst).__name__[:40]} (BUILD)")
        if hasattr(inst, "__setstate__"):
            inst.__setstate__(state)
        elif state is not None:
            if type(state) is not dict:
                raise LatentFitError(f"malformed state for a {type(inst).__name__}")
            _check_keys(list(state), "object state", str_only=True)
            inst.__dict__.update(state)

    def load_setitem(self):
        value, key = self.stack.pop(), self.stack.pop()
        self._set_items([key, value])

    def load_setitems(self):
        self._set_items(self.pop_mark())

    def _set_items(self, items):
        target = self.stack[-1]
        if not isinstance(target, dict):
            raise Refused(f"refusing to set items of a {type(target).__name__[:40]}")
        if len(items) % 2:
            raise LatentFitError("malformed dict items (a key without a value)")
        _check_keys(items[::2], type(target).__name__)
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def load_dict(self):
        items = self.pop_mark()
        if len(items) % 2:
            raise LatentFitError("malformed dict items (a key without a value)")
        _check_keys(items[::2], "dict")
        self.append(dict(zip(items[::2], items[1::2])))

    def load_additems(self):
        items = self.pop_mark()
        if type(self.stack[-1]) is not set:
            raise Refused(f"refusing to add items to a {type(self.stack[-1]).__name__[:40]}")
        _check_keys(items, "set")
        self.stack[-1].update(items)

    def load_frozenset(self):
        items = self.pop_mark()
        _check_keys(items, "frozenset")
        self.append(frozenset(items))

    def load_append(self):
        value = self.stack.pop()
        self._list().append(value)

    def load_appends(self):
        items = self.pop_mark()
        self._list().extend(items)

    def _list(self) -> list:
        if type(self.stack[-1]) is not list:
            raise Refused(f"refusing to append to a {type(self.stack[-1]).__name__[:40]}")
        return self.stack[-1]


def _charged(op):
    """An opcode that first spends one object of the load's budget."""

    def charged(self):
        self.budget.spend()
        op(self)

    return charged


_Unpickler.dispatch = {
    code: _charged(getattr(_Unpickler, op.__name__)) for code, op in pickle._Unpickler.dispatch.items()
}


def _check_keys(keys, where: str, str_only: bool = False) -> None:
    """Dict keys and set items may be text, or integers below 2**60 (they hash to themselves);
    any other hash a file could choose to collide, and make loading quadratic."""
    for k in keys:
        if not (type(k) is str or (not str_only and type(k) is int and -MAX_KEY_INT < k < MAX_KEY_INT)):
            raise Refused(
                f"refusing a {type(k).__name__[:40]} as a key or item of a {where[:40]} (network files use text keys)"
            )


def refuse_globals(module: str, name: str):
    raise Refused(f"refusing to load global '{module}.{name}'")


def unpickle(
    data: bytes, find_class=refuse_globals, persistent_load=None, start: int = 0, budget: Budget | None = None
):
    """(object, end) of the pickle at data[start:], its opcodes checked first and charged to
    `budget` (by default one set from len(data)); globals come from find_class(module, name) only."""
    budget = budget or Budget(len(data))
    end = check_opcodes(data, start, budget.objects)
    f = io.BytesIO(data)
    f.seek(start)
    try:
        return _Unpickler(f, find_class, persistent_load, budget).load(), end
    except LatentFitError:
        raise
    except Exception as e:  # whatever damaged data makes the unpickler or the stand-ins raise
        raise LatentFitError(f"not a valid pickle ({describe(e)})") from None


def describe(e: BaseException) -> str:
    """An exception as a short line for a message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"[:200]


# ---------------------------------------------------------------- numpy arrays and scalars

_NUMERIC = {f"{k}{n}" for k, sizes in (("b", "1"), ("i", "1248"), ("u", "1248"), ("f", "248")) for n in sizes} | {
    "c8",
    "c16",
}


class _DType:
    """Stand-in for numpy.dtype(name, align, copy) and its pickled state: plain numbers only."""

    takes_pickled_state = True

    def __init__(self, name, align=False, copy=False):
        if name not in _NUMERIC:
            raise Refused(f"refusing numpy dtype {str(name)[:20]!r} (only plain numbers)")
        self.dtype = np.dtype(name)

    def __setstate__(self, state):
        if not (
            isinstance(state, tuple)
            and len(state) in (8, 9)
            and state[0] in (3, 4)
            and state[1] in ("<", ">", "|", "=")
            and state[2:7] == (None, None, None, -1, -1)
        ):
            raise Refused("refusing a numpy dtype with fields, a subarray or an item size")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class NDArray:
    """Stand-in for a pickled numpy array (numpy.ndarray and _reconstruct): `array` holds a
    copy of the file's bytes once its state is set, charged to the load's `budget`."""

    takes_pickled_state = True
    array = None
    budget: Budget

    def __setstate__(self, state):
        if not (
            isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[1], tuple)
            and isinstance(state[2], _DType)
            and isinstance(state[4], bytes)
            and all(type(s) is int and s >= 0 for s in state[1])
        ):
            raise LatentFitError("malformed numpy array")
        shape, dtype, fortran, data = state[1], state[2].dtype, state[3], state[4]
        if math.prod(shape) * dtype.itemsize != len(data):
            raise LatentFitError(f"numpy array of shape {list(shape)[:8]} does not match its {len(data)} bytes")
        self.budget.spend_bytes(len(data))
        self.array = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C").copy()


def _scalar(dtype, data):  # numpy.core.multiarray.scalar
    if not isinstance(dtype, _DType) or not isinstance(data, bytes) or len(data) != dtype.dtype.itemsize:
        raise LatentFitError("malformed numpy scalar")
    return np.frombuffer(data, dtype.dtype).copy()[0]


def numpy_globals(budget: Budget) -> dict:
    """Stand-ins for the numpy globals of pickled arrays and scalars, made for one load."""
    array = type("NDArray", (NDArray,), {"budget": budget})

    def reconstruct(cls, shape, typecode):  # numpy.core.multiarray._reconstruct
        if cls is not array:
            raise Refused("refusing a numpy array subclass")
        return array()

    return {
        ("numpy", "dtype"): type("DType", (_DType,), {}),
        ("numpy", "ndarray"): array,
        **{(m, "scalar"): _scalar for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
        **{(m, "_reconstruct"): reconstruct for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
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


_STORAGE_DTYPES = {
    "Float": torch.float32,
    "Double": torch.float64,
    "Half": torch.float16,
    "BFloat16": torch.bfloat16,
    "Long": torch.int64,
    "Int": torch.int32,
    "Short": torch.int16,
    "Char": torch.int8,
    "Byte": torch.uint8,
    "Bool": torch.bool,
    "Untyped": torch.uint8,
}


def rebuild_tensor(storage, offset, size, stride, *_):  # torch._utils._rebuild_tensor(_v2); hooks dropped
    """A view inside the storage (torch checks its extent) of no more numbers than the storage
    holds: a stride-0 view of millions of numbers over a few bytes is refused."""
    if not (
        isinstance(storage, Storage)
        and type(offset) is int
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and all(type(s) is int for s in size + stride)
    ):
        raise LatentFitError("malformed tensor")
    if len(size) > 64 or math.prod(size) > storage.data.numel():
        raise LatentFitError(
            f"a tensor view of shape {list(size)[:8]} exceeds its storage of {storage.data.numel():,} numbers"
        )
    return storage.data.as_strided(size, stride, offset)


def rebuild_parameter(data, *_):  # torch._utils._rebuild_parameter(_with_state): the plain tensor
    if not isinstance(data, torch.Tensor):
        raise LatentFitError("malformed parameter")
    return data


def torch_globals() -> dict:
    """The globals of tensors and state dicts, with storage types made for one load."""
    return {
        ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("torch", f"{k}Storage"): _StorageType(d) for k, d in _STORAGE_DTYPES.items()},
    }


def _storage_id(pid) -> tuple[str, torch.dtype, int]:
    """(key, dtype, numel) of a persistent id ('storage', type, key, location, numel[, None])."""
    if not (
        isinstance(pid, tuple)
        and len(pid) in (5, 6)
        and pid[0] == "storage"
        and isinstance(pid[1], _StorageType)
        and isinstance(pid[2], str)
        and type(pid[4]) is int
        and pid[4] >= 0
        and pid[5:] in ((), (None,))
    ):
        raise LatentFitError("malformed tensor storage reference")
    return pid[2], pid[1].dtype, pid[4]


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


def read_torch_file(data: bytes, globals_: dict | None = None, budget: Budget | None = None):
    """The object of a torch.save file (zip or legacy format) whose globals are in `globals_`
    (default: torch_globals()), charged to `budget` (default: one set from len(data))."""
    globals_ = globals_ or torch_globals()
    budget = budget or Budget(len(data))

    def find_class(module, name):
        if (module, name) in globals_:
            return globals_[module, name]
        refuse_globals(module, name)

    if data[:4] == b"PK\x03\x04":
        return _read_torch_zip(data, find_class, budget)
    return _read_torch_legacy(data, find_class, budget)


def _open_zip(data: bytes) -> zipfile.ZipFile:
    """The zip archive in `data`, refused when two entries' bytes overlap (zipfile up to
    Python 3.11 lets hundreds of entries name one block, and so multiply the file's data)."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        spans = []
        for info in z.infolist():
            at = info.header_offset
            if data[at : at + 4] != b"PK\x03\x04":
                raise LatentFitError(f"zip entry {info.filename[:40]!r} has no local header")
            name_len, extra_len = (int.from_bytes(data[at + k : at + k + 2], "little") for k in (26, 28))
            spans.append((at, at + 30 + name_len + extra_len + info.compress_size, info.filename))
            if spans[-1][1] > len(data):
                raise LatentFitError(f"zip entry {info.filename[:40]!r} is larger than the file")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise LatentFitError(f"not a readable zip file ({describe(e)})") from None
    spans.sort()
    for (_, end, name), (start, _, other) in itertools.pairwise(spans):
        if start < end:
            raise LatentFitError(f"zip entries {name[:40]!r} and {other[:40]!r} overlap")
    return z


def _read_torch_zip(data: bytes, find_class, budget: Budget):
    z = _open_zip(data)
    names = z.namelist()
    tops = [n[: -len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise LatentFitError("a zip file but not a torch.save archive (no data.pkl)")
    top = tops[0]
    if top + "constants.pkl" in names or any(n.startswith(top + "code/") for n in names):
        raise Refused(
            "a TorchScript archive, which runs code when loaded; if you trust it, name it .ts or pass --torchscript"
        )

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
            budget.spend_bytes(len(raw))
            storages[key] = Storage(
                torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            )
        return storages[key]

    return unpickle(record("data.pkl"), find_class, persistent_load, budget=budget)[0]


def _read_torch_legacy(data: bytes, find_class, budget: Budget):
    """Header pickles (magic, protocol, sys_info), the object, its storage keys, then per
    storage an int64 element count and the bytes. Storages are allocated as they are named,
    never beyond the file's own size, and filled from the data section."""
    magic, pos = unpickle(data, budget=budget)
    if magic != LEGACY_TORCH_MAGIC:
        raise LatentFitError("not a torch.save file")
    protocol, pos = unpickle(data, start=pos, budget=budget)
    sys_info, pos = unpickle(data, start=pos, budget=budget)
    if protocol != 1001 or not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise LatentFitError("an unsupported (or big-endian) torch.save format")
    storages: dict[str, Storage] = {}
    left = [len(data)]

    def persistent_load(pid):
        key, dtype, numel = _storage_id(pid)
        if key not in storages:
            left[0] -= numel * _element_size(dtype)
            if left[0] < 0:
                raise LatentFitError("declares more tensor data than the file holds")
            budget.spend_bytes(numel * _element_size(dtype))
            storages[key] = Storage(torch.zeros(numel, dtype=dtype))
        return storages[key]

    obj, pos = unpickle(data, find_class, persistent_load, start=pos, budget=budget)
    keys, pos = unpickle(data, start=pos, budget=budget)
    if not (
        type(keys) is list
        and all(type(k) is str for k in keys)
        and len(keys) == len(storages)
        and set(keys) == set(storages)
    ):
        raise LatentFitError("its storage keys do not match its tensors")
    for key in keys:
        st = storages[key].data
        numel = int.from_bytes(data[pos : pos + 8], "little", signed=True)
        nbytes = st.numel() * st.element_size()
        chunk = data[pos + 8 : pos + 8 + nbytes]
        if numel != st.numel() or len(chunk) != nbytes:
            raise LatentFitError("tensor data truncated or of the wrong size")
        if nbytes:
            st.view(torch.uint8).copy_(torch.frombuffer(bytearray(chunk), dtype=torch.uint8))
        pos += 8 + nbytes
    return obj


def load_storage_bytes(data: bytes, budget: Budget | None = None) -> Storage:
    """torch.storage._load_from_bytes: one storage saved by torch.save, charged to `budget`."""
    obj = read_torch_file(data, budget=budget)
    if not isinstance(obj, Storage):
        raise LatentFitError("malformed tensor storage")
    return obj
