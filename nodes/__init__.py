"""ComfyUI nodes: a thin layer over ``diffstyle360_core`` (host facts §1; one registration mechanism, V1).

Node ids are frozen: saved workflows store them, and their widget order
(``widgets_values`` is positional), so new inputs go at the end.
"""

from . import host
from .camera import TurntableCamera
from .loader import LoadAppearanceModules
from .sampling import BackViewGenerate, StyleFusionSampler
from .styles import KeyScale, StyleBlend, StyleMask

host.register_model_folder()

NODE_CLASS_MAPPINGS = {
    "DiffStyle360LoadAppearanceModules": LoadAppearanceModules,
    "DiffStyle360BackViewGenerate": BackViewGenerate,
    "DiffStyle360TurntableCamera": TurntableCamera,
    "DiffStyle360KeyScale": KeyScale,
    "DiffStyle360StyleMask": StyleMask,
    "DiffStyle360StyleBlend": StyleBlend,
    "DiffStyle360StyleFusionSampler": StyleFusionSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DiffStyle360LoadAppearanceModules": "DiffStyle360 Load Appearance Modules",
    "DiffStyle360BackViewGenerate": "DiffStyle360 Back-View Generate",
    "DiffStyle360TurntableCamera": "DiffStyle360 Turntable Camera",
    "DiffStyle360KeyScale": "DiffStyle360 Key Scale",
    "DiffStyle360StyleMask": "DiffStyle360 Style Mask",
    "DiffStyle360StyleBlend": "DiffStyle360 Style Blend",
    "DiffStyle360StyleFusionSampler": "DiffStyle360 Style Fusion Sampler",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
