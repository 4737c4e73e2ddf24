"""ComfyUI entry point of the DiffStyle360 pack (registration only).

ComfyUI imports this folder as a package but does not put it on ``sys.path``,
so the core library ``diffstyle360_core`` next to this file is registered under
its own name first (without touching ``sys.path``: our ``nodes`` package must
never shadow ComfyUI's ``nodes`` module). The nodes live in ``nodes/``; ComfyUI
registers them through ``comfy_entrypoint()`` (its V3 extension API).
"""

import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))


def _register_core() -> None:
    name = "diffstyle360_core"
    if name in sys.modules:
        return
    folder = os.path.join(_ROOT, name)
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


if __package__:  # imported as a package (ComfyUI); a bare import of this file has nothing to register
    _register_core()
    from .nodes import comfy_entrypoint  # noqa: E402
else:  # pragma: no cover

    async def comfy_entrypoint():
        raise ImportError("load the DiffStyle360 pack as a package (ComfyUI's custom_nodes/ does)")


# V3 registration only: ComfyUI ignores comfy_entrypoint when a module also has NODE_CLASS_MAPPINGS.
__all__ = ["comfy_entrypoint"]
