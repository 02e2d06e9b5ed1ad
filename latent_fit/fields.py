"""Checks shared by the readers of latent-fit's own files (latent .npz, direction .npy, tuned and
encoder .safetensors): regular files only, JSON text parsed within a size and a nesting depth,
safetensors tensors of the names, shapes and float dtypes a reader expects."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LatentFitError
from .files import file_problem

MAX_JSON_CHARS = 2**20  # per JSON text: a record, a model card or settings are a few KB
MAX_JSON_DEPTH = 16  # nested arrays and objects: latent-fit writes at most 3 levels
FLOATS = ("F16", "BF16", "F32", "F64")  # safetensors dtypes of weights


class NotJSON(LatentFitError):
    """Text that does not parse as JSON (where a reader allows plain text instead)."""


def regular_file(path: str | Path, missing: str) -> Path:
    """`path` if it is a regular file, else one line naming it: `missing` (what it says when the
    file does not exist), or why it is not a file (a FIFO, a device, a folder, a symlink loop).
    Nothing is opened: a FIFO never blocks."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise LatentFitError(f"{path}: {problem}")
    if not path.exists():
        raise LatentFitError(f"{path}: {missing}")
    return path


def parse_json(text, what: str, kind: type = dict, max_chars: int = MAX_JSON_CHARS):
    """The value of the JSON `text`, an instance of `kind` (object: any); else one LatentFitError
    line naming `what`: not text, more than max_chars, nested deeper than MAX_JSON_DEPTH, not JSON
    (NotJSON), or a value of another type."""
    if not isinstance(text, str):
        raise LatentFitError(f"{what}: not JSON text")
    if len(text) > max_chars:
        raise LatentFitError(f"{what}: {len(text):,} characters of JSON, more than the {max_chars:,} latent-fit reads")
    deep = LatentFitError(f"{what}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        value = json.loads(text)
    except RecursionError:  # the C parser stops at the interpreter's recursion limit
        raise deep from None
    except ValueError as e:
        raise NotJSON(f"{what}: not JSON text ({' '.join(str(e).split())})") from None
    if _too_deep(value):
        raise deep
    if not isinstance(value, kind):
        raise LatentFitError(f"{what}: JSON {type(value).__name__}, not {kind.__name__}")
    return value


def _too_deep(value) -> bool:
    """Whether `value` nests lists and dicts deeper than MAX_JSON_DEPTH (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack += [(x, depth + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return False


def misfits(slices: dict, shapes: dict) -> list[str]:
    """Sorted names of a safetensors file's tensors (name -> safe_open's get_slice) that are not
    floats, are missing from or extra to `shapes` (name -> shape), or have another shape there.
    Only the header is looked at: nothing is read."""
    return sorted(
        k
        for k in set(slices) | set(shapes)
        if k not in slices
        or k not in shapes
        or slices[k].get_dtype() not in FLOATS
        or tuple(slices[k].get_shape()) != tuple(shapes[k])
    )
