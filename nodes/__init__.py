"""ComfyUI nodes: a thin layer over ``diffstyle360_core``, declared with ComfyUI's V3 schema (host facts §1.3).

One registration mechanism: the pack's ``comfy_entrypoint()`` returns
:class:`DiffStyle360Extension`, whose node list is :data:`NODE_LIST` (no
``NODE_CLASS_MAPPINGS``: ComfyUI would take that instead and ignore the entry
point). Node ids are frozen: saved workflows store them, and their widget order
(``widgets_values`` is positional), so new inputs go at the end.
"""

from . import examples, host
from .camera import TurntableCamera
from .loader import LoadAppearanceModules
from .sampling import BackViewGenerate, StyleFusionSampler
from .styles import KeyScale, StyleBlend, StyleMask

host.register_model_folder()
examples.install_example_images(host.input_directory())

#: The seven nodes, in the order the Add Node menu lists them.
NODE_LIST = [LoadAppearanceModules, BackViewGenerate, TurntableCamera, KeyScale, StyleMask, StyleBlend,
             StyleFusionSampler]


def nodes_by_id() -> dict:
    """Node id → class, as ComfyUI registers them (by ``define_schema().node_id``)."""
    return {cls.GET_SCHEMA().node_id: cls for cls in NODE_LIST}


class DiffStyle360Extension(host.ComfyExtension):
    """The pack as ComfyUI's V3 loader sees it."""

    async def get_node_list(self) -> list:
        return list(NODE_LIST)


async def comfy_entrypoint() -> DiffStyle360Extension:
    return DiffStyle360Extension()


__all__ = ["NODE_LIST", "DiffStyle360Extension", "comfy_entrypoint", "nodes_by_id"]
