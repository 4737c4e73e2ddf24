"""ComfyUI entry point of the DiffStyle360 pack.

ComfyUI imports this file; the nodes live in ``nodes/`` (a thin layer over
``diffstyle360_core``). Until the node layer lands the pack registers nothing,
so installing it never breaks a ComfyUI start.
"""

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F401
except ImportError:  # pragma: no cover - imported outside a package (e.g. by pytest collection)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
