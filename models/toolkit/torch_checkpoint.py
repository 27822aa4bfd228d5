"""Read PyTorch state-dict checkpoints without torch, through a restricted unpickler.

A `.pth` file is pickle data: loading it with `pickle.load` runs whatever callables it names, so
a checkpoint from outside is untrusted code. Here only the few globals a tensor checkpoint needs
are resolved, each to a harmless stand-in (an OrderedDict, a tensor rebuilt as a numpy view, a
storage type naming a dtype); anything else is refused. Storage sizes are checked against the
bytes the file actually holds before anything is allocated.

Both of torch's formats are read: the legacy one (torchvision's published ImageNet checkpoints,
e.g. `mobilenet_v2-b0353104.pth`: magic number, protocol, system info, the pickled object, the
storage keys, then each storage's raw bytes) and the zip one (`<archive>/data.pkl` plus one
`<archive>/data/<key>` file per storage) that torch has written since 1.6.

Hand-written rather than `torch.load`: torch is not installed (its wheels would dwarf the rest),
and `torch.load` unpickles (`weights_only=True` narrows what it resolves, but is torch's own
allow-list and still needs torch); safetensors readers cannot read `.pth` files.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import GdlError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Storage classes a tensor checkpoint may name, and the dtype of their elements. bfloat16 has no
# numpy type: it is read as its raw 16 bits and widened to float32.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Sealed:
    """Stand-ins refuse pickle's BUILD opcode (which would set attributes on them): a hostile
    file must not change how later tensors, or later files, are read."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError("checkpoint objects cannot be modified by the pickle")


class _StorageType(_Sealed):
    __slots__ = ("name",)

    def __init__(self, name: str):
        object.__setattr__(self, "name", name)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name]).newbyteorder("<")


class _Storage(_Sealed):
    __slots__ = ("key", "kind", "numel", "data")

    def __init__(self, key: str, kind: _StorageType, numel: int):
        self.key, self.kind, self.numel, self.data = key, kind, numel, None


class _TensorRef(_Sealed):
    """What `_rebuild_tensor_v2` returns here: a view description, resolved once data is read."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Callable(_Sealed):
    __slots__ = ("fn",)

    def __init__(self, fn):
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args):
        return self.fn(*args)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor must be built on a storage")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list):
        raise pickle.UnpicklingError("bad tensor size or stride")
    ints = [storage_offset, *size, *stride]
    if not all(type(v) is int and v >= 0 for v in ints) or len(size) != len(stride):
        raise pickle.UnpicklingError("bad tensor size, stride or offset")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_rest):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): lambda: _Callable(collections.OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _Callable(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): lambda: _Callable(_rebuild_parameter),
    **{("torch", name): (lambda name=name: _StorageType(name)) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, origin: str, storages: dict[str, _Storage] | None):
        super().__init__(file)
        self.origin = origin
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]()  # a fresh stand-in per reference
        raise GdlError(f"refusing to load {module}.{name} from {self.origin}: not a tensor checkpoint")

    def persistent_load(self, pid: Any) -> Any:
        if self.storages is None:
            raise GdlError(f"{self.origin}: unexpected storage reference")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise GdlError(f"{self.origin}: unknown persistent reference {pid!r:.80}")
        _, kind, key, _location, numel, *view = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not isinstance(numel, int):
            raise GdlError(f"{self.origin}: malformed storage reference")
        if view and view[0] is not None:
            raise GdlError(f"{self.origin}: storage views (torch < 0.4 checkpoints) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(key, kind, numel)
        return self.storages[key]


def _load(data: bytes | io.BufferedIOBase, origin: str, storages: dict[str, _Storage] | None) -> Any:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    return _Unpickler(stream, origin, storages).load()


def _array(storage: _Storage, raw: bytes, origin: str) -> np.ndarray:
    dtype = storage.kind.dtype
    if len(raw) != storage.numel * dtype.itemsize:
        raise GdlError(
            f"{origin}: storage {storage.key} holds {len(raw)} bytes, not {storage.numel} x {dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype)


def _array_of(ref: _TensorRef, origin: str) -> np.ndarray:
    """A copy of the tensor a reference describes (the file's buffer is not kept)."""
    data = ref.storage.data
    if data is None:
        raise GdlError(f"{origin}: storage {ref.storage.key} has no data")
    count = int(np.prod(ref.size, dtype=np.int64)) if ref.size else 1
    if count > max(len(data), 1):  # stride-0 tricks must not make a terabyte from one number
        raise GdlError(f"{origin}: a tensor claims more elements than storage {ref.storage.key} holds")
    if ref.size and min(ref.size) > 0:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= len(data):
            raise GdlError(f"{origin}: a tensor reaches past the end of storage {ref.storage.key}")
    elif ref.offset > len(data):
        raise GdlError(f"{origin}: a tensor starts past the end of storage {ref.storage.key}")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset :], ref.size, strides, writeable=False)
    array = np.array(view, dtype=data.dtype.newbyteorder("="))
    if ref.storage.kind.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _state_dict(obj: Any, origin: str) -> dict[str, np.ndarray]:
    """The flat name -> array mapping a state dict is. Nothing else is walked (no nesting to
    recurse into), and each tensor is copied once however often the pickle refers to it, with
    the total bounded by the bytes the storages hold: a small file cannot expand into a huge one."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(obj, dict) or not all(isinstance(v, _TensorRef) for v in obj.values()):
        raise GdlError(f"{origin} does not hold a state dict (a mapping of names to tensors)")
    storages = {id(ref.storage): ref.storage for ref in obj.values()}
    budget = 4 * sum(st.data.nbytes for st in storages.values() if st.data is not None)
    arrays: dict[int, np.ndarray] = {}
    result = {}
    for name, ref in obj.items():
        if id(ref) not in arrays:
            arrays[id(ref)] = _array_of(ref, origin)
            budget -= arrays[id(ref)].nbytes
            if budget < 0:
                raise GdlError(f"{origin}: its tensors add up to far more than the data the file holds")
        result[str(name)] = arrays[id(ref)]
    return result


def _read_legacy(path: Path, origin: str) -> Any:
    with open(path, "rb") as fh:
        if _load(fh, origin, None) != LEGACY_MAGIC:
            raise GdlError(f"{origin} is not a torch checkpoint (bad magic number)")
        if _load(fh, origin, None) != LEGACY_PROTOCOL:
            raise GdlError(f"{origin}: unsupported torch checkpoint protocol")
        _load(fh, origin, None)  # system info: endianness and type sizes
        storages: dict[str, _Storage] = {}
        obj = _load(fh, origin, storages)
        keys = _load(fh, origin, None)
        if not isinstance(keys, list) or set(keys) != set(storages):
            raise GdlError(f"{origin}: storage keys do not match the checkpoint's tensors")
        remaining = path.stat().st_size - fh.tell()
        for key in keys:
            storage = storages[key]
            head = fh.read(8)
            if len(head) != 8:
                raise GdlError(f"{origin} is truncated")
            count = int.from_bytes(head, "little", signed=True)
            itemsize = storage.kind.dtype.itemsize
            nbytes = count * itemsize if count == storage.numel else count
            remaining -= 8
            if count < 0 or nbytes > remaining:  # checked before reading: no huge allocation
                raise GdlError(
                    f"{origin} is truncated: storage {key} needs {nbytes} bytes, {remaining} remain"
                )
            storage.data = _array(storage, fh.read(nbytes), origin)
            remaining -= nbytes
    return obj


def _read_zip(path: Path, origin: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise GdlError(f"{origin}: a zip checkpoint must hold exactly one <archive>/data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and zf.read(byteorder).strip() not in (b"little", b""):
            raise GdlError(f"{origin}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        info = zf.getinfo(pickles[0])
        if info.file_size > 1100 * max(info.compress_size, 1):  # beyond deflate's best ratio
            raise GdlError(f"{origin}: data.pkl claims an impossible compression ratio")
        obj = _load(zf.read(pickles[0]), origin, storages)
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise GdlError(f"{origin}: storage {key} is missing")
            info = zf.getinfo(member)
            if info.file_size > 1100 * max(info.compress_size, 1):  # beyond deflate's best ratio
                raise GdlError(f"{origin}: storage {key} claims an impossible compression ratio")
            if info.file_size != storage.numel * storage.kind.dtype.itemsize:
                raise GdlError(
                    f"{origin}: storage {key} has {info.file_size} bytes, not the size its tensor needs"
                )
            storage.data = _array(storage, zf.read(member), origin)
    return obj


def read_state_dict(path: Path, origin: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a torch checkpoint (legacy or zip format) as name -> numpy array."""
    path = Path(path)
    origin = origin or path.name
    try:
        obj = _read_zip(path, origin) if zipfile.is_zipfile(path) else _read_legacy(path, origin)
        return _state_dict(obj, origin)
    except GdlError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
        RecursionError,  # a pickle nested thousands deep
        MemoryError,
        zipfile.BadZipFile,
    ) as exc:
        raise GdlError(f"{origin} is not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None
