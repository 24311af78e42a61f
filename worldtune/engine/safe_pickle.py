"""A pickle module for `torch.load(pickle_module=...)` that never runs code from the file.

Globals named by the file resolve only to an allow-list (containers, tensor and numpy rebuild
functions, torch dtypes); anything else becomes an inert `UnpickledObject` subclass that records
what it was given. So an official mmengine checkpoint (which pickles HistoryBuffer, ConfigDict...)
loads, and a crafted file cannot execute anything.
"""
import pickle
import types
from collections import Counter, OrderedDict

import numpy as np
import torch
from torch import nn


class UnpickledObject:
    """Inert stand-in for a class or function the restricted loader refused to import.

    Nothing from the file is ever called: construction arguments, ``__setstate__`` state and
    dict/list items are only recorded. ``pickled_name`` is the global the file asked for,
    e.g. ``mmengine.logging.history_buffer.HistoryBuffer``.
    """

    pickled_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items, obj.elements = args, kwargs, None, {}, []
        return obj

    def __init__(self, *args, **kwargs):  # arguments were stored by __new__
        pass

    def __setstate__(self, state) -> None:
        self.state = state

    def __setitem__(self, key, value) -> None:
        self.items[key] = value

    def append(self, value) -> None:
        self.elements.append(value)

    def extend(self, values) -> None:
        self.elements.extend(values)

    def __repr__(self) -> str:
        return f"<UnpickledObject {self.pickled_name}>"


def _safe_reconstructor(cls, base, state):
    # copyreg._reconstructor (pickle protocol < 2) would call base.__new__/base.__init__ from the file.
    if isinstance(cls, type) and issubclass(cls, UnpickledObject):
        return cls(state) if state is not None else cls()
    raise pickle.UnpicklingError(f"refusing copyreg._reconstructor for {cls!r}")


class _TensorType:
    """What the file gets for `torch.Tensor`: the class itself would let the file's BUILD
    instruction set attributes on it for the whole process. A token has no attribute to set."""
    __slots__ = ()


class _ParameterType:
    """What the file gets for `nn.Parameter` (see `_TensorType`)."""
    __slots__ = ()


_TYPE_TOKENS = {_TensorType: torch.Tensor, _ParameterType: nn.Parameter}


def _safe_rebuild_from_type_v2(func, new_type, args, state):
    if type(new_type) not in _TYPE_TOKENS:
        raise pickle.UnpicklingError(f"refusing tensor subclass {new_type!r}")
    return torch._tensor._rebuild_from_type_v2(func, _TYPE_TOKENS[type(new_type)], args, state)


def _safe_np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing numpy array subclass {subtype!r}")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _no_size(args: tuple) -> tuple:
    # pickles build a bytearray from its contents (bytes, or str + encoding), never from a size
    if args and isinstance(args[0], int):
        raise pickle.UnpicklingError("refusing bytearray(size) from a checkpoint")
    return args


# numpy.(_)core.multiarray._reconstruct / .scalar, taken from live objects whatever the numpy version
_NP_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_ALLOWED: dict[str, object] = {
    "collections.OrderedDict": OrderedDict,
    "collections.Counter": Counter,
    "collections.defaultdict": lambda *args: {},  # the default factory would be a callable from the file
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.complex": complex,
    "builtins.bytearray": lambda *args: bytearray(*_no_size(args)),  # bytearray(n) would allocate n bytes
    "builtins.slice": slice,
    "_codecs.encode": __import__("codecs").encode,  # how protocol-2 pickles store bytes
    "copyreg._reconstructor": _safe_reconstructor,
    "torch.Size": torch.Size,
    "torch.Tensor": _TensorType,
    "torch.device": torch.device,
    "torch.nn.parameter.Parameter": _ParameterType,
    "torch._tensor._rebuild_from_type_v2": _safe_rebuild_from_type_v2,
    "torch.serialization._get_layout": torch.serialization._get_layout,
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
}
for _name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
              "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_cpu_tensor",
              "_rebuild_meta_tensor_no_storage"):
    if hasattr(torch._utils, _name):
        _ALLOWED[f"torch._utils.{_name}"] = getattr(torch._utils, _name)
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[f"{_mod}._reconstruct"] = _safe_np_reconstruct
    _ALLOWED[f"{_mod}.scalar"] = _NP_SCALAR


def _immutable(obj) -> bool:
    """A C type such as set or np.ndarray, or a torch dtype: nothing can be set on it."""
    return isinstance(obj, torch.dtype) or (isinstance(obj, type) and bool(obj.__flags__ & (1 << 8)))


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from ``_ALLOWED`` (or are torch dtypes); all else is inert.

    Pickle's BUILD instruction sets attributes on any object the file holds, a global included.
    So the file never gets a shared mutable object: immutable types as they are, a fresh token for
    Tensor / Parameter, a fresh wrapper around each allowed function or Python class (whose
    `__defaults__` or methods could otherwise be replaced for the whole process), and placeholder
    classes private to this load.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        qualname = f"{module}.{name}"
        target = _ALLOWED.get(qualname)
        if target is None and module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            target = getattr(torch, name)
        if target is None:
            if qualname not in self._placeholders:
                self._placeholders[qualname] = type(name, (UnpickledObject,), {"pickled_name": qualname})
            return self._placeholders[qualname]
        if target in (_TensorType, _ParameterType):
            return target()
        if _immutable(target):
            return target
        return lambda *args, **kwargs: target(*args, **kwargs)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) needs an object with .Unpickler and .load
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="worldtune_restricted_pickle",
                                           Unpickler=_RestrictedUnpickler, load=_restricted_load)
