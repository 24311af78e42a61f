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


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    if qualname not in _PLACEHOLDERS:
        _PLACEHOLDERS[qualname] = type(qualname.rsplit(".", 1)[-1], (UnpickledObject,), {"pickled_name": qualname})
    return _PLACEHOLDERS[qualname]


def _safe_reconstructor(cls, base, state):
    # copyreg._reconstructor (pickle protocol < 2) would call base.__new__/base.__init__ from the file.
    if isinstance(cls, type) and issubclass(cls, UnpickledObject):
        return cls(state) if state is not None else cls()
    raise pickle.UnpicklingError(f"refusing copyreg._reconstructor for {cls!r}")


def _safe_rebuild_from_type_v2(func, new_type, args, state):
    if new_type not in (torch.Tensor, nn.Parameter):
        raise pickle.UnpicklingError(f"refusing tensor subclass {new_type!r}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _safe_np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing numpy array subclass {subtype!r}")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


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
    "builtins.bytearray": bytearray,
    "builtins.slice": slice,
    "_codecs.encode": __import__("codecs").encode,  # how protocol-2 pickles store bytes
    "copyreg._reconstructor": _safe_reconstructor,
    "torch.Size": torch.Size,
    "torch.Tensor": torch.Tensor,
    "torch.device": torch.device,
    "torch.nn.parameter.Parameter": nn.Parameter,
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


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from ``_ALLOWED`` (or are torch dtypes); all else is inert."""

    def find_class(self, module: str, name: str):
        qualname = f"{module}.{name}"
        if qualname in _ALLOWED:
            return _ALLOWED[qualname]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _placeholder(qualname)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


# torch.load(pickle_module=...) needs an object with .Unpickler and .load
RESTRICTED_PICKLE = types.SimpleNamespace(__name__="worldtune_restricted_pickle",
                                           Unpickler=_RestrictedUnpickler, load=_restricted_load)
