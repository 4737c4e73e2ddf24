"""Run a V3 node the way ComfyUI 0.8's executor does (execution.py ``_async_map_node_over_list``).

The executor never instantiates state into a node: it validates the class,
makes a fresh clone carrying the hidden inputs (``PREPARE_CLASS_CLONE``), locks
it, and calls ``EXECUTE_NORMALIZED`` with the inputs by keyword (unconnected
optional inputs are left out); the node's outputs are ``NodeOutput.result``.
Tests may give values positionally: they are named in the schema's input order
first (required, then optional: the order the frontend stores widgets and links
in), which is also a check of that order.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

try:  # inside a ComfyUI source tree: its own locking, exactly as the executor uses it
    from comfy_api.internal import make_locked_method_func
except ImportError:
    make_locked_method_func = None


def node(node_id: str):
    """The node class registered under ``node_id``."""
    import nodes  # the pack's node package (imported on first use, like the tests that need it)

    return nodes.nodes_by_id()[node_id]


def input_ids(cls) -> list:
    """Input ids in the order ComfyUI sends them to the frontend (``input_order``: required, then optional)."""
    order = cls.GET_NODE_INFO_V1()["input_order"]
    return list(order.get("required", [])) + list(order.get("optional", []))


def _locked(cls):
    """A clone whose attributes cannot be set (ComfyUI's ``lock_class``): nodes keep no state on the class."""

    class LockedMeta(type(cls)):
        def __setattr__(cls_, name, value):
            raise AttributeError(f"Cannot modify class attribute '{name}' on locked class '{cls_.__name__}'")

    return LockedMeta(cls.__name__, cls.__bases__, dict(cls.__dict__))


def call(cls, *args: Any, hidden: Optional[Dict[str, Any]] = None, **inputs: Any):
    """``cls`` executed as the host executes it; returns its outputs (``NodeOutput.result``, a tuple)."""
    ids = input_ids(cls)
    if len(args) > len(ids):
        raise TypeError(f"{cls.__name__} takes {len(ids)} inputs, {len(args)} given")
    for name, value in zip(ids, args):
        if name in inputs:
            raise TypeError(f"{cls.__name__}: input {name!r} given twice")
        inputs[name] = value
    unknown = set(inputs) - set(ids)
    if unknown:
        raise TypeError(f"{cls.__name__} has no inputs {sorted(unknown)}")
    cls.VALIDATE_CLASS()
    clone = cls.PREPARE_CLASS_CLONE({"hidden_inputs": dict(hidden or {})})
    if make_locked_method_func is not None:
        run = make_locked_method_func(cls, cls.FUNCTION, clone)
    else:
        method = getattr(cls, cls.FUNCTION).__func__
        locked = _locked(clone)

        def run(**kw):
            return method(locked, **kw)

    out = run(**inputs)
    assert out.result is not None and len(out.result) == len(cls.GET_SCHEMA().outputs), out
    return tuple(out.result)


def run(node_id: str, *args: Any, **inputs: Any):
    """:func:`call` on the node registered as ``node_id``."""
    return call(node(node_id), *args, **inputs)
