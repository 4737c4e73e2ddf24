"""ComfyUI nodes: a thin layer over ``diffstyle360_core`` (host facts §1; one registration mechanism, V1).

Node ids are frozen: saved workflows store them, and their widget order
(``widgets_values`` is positional), so new inputs go at the end.
"""

from . import examples, host
from .camera import TurntableCamera
from .loader import LoadAppearanceModules
from .sampling import BackViewGenerate, StyleFusionSampler
from .styles import KeyScale, StyleBlend, StyleMask

host.register_model_folder()
examples.install_example_images(host.input_directory())

NODE_CLASS_MAPPINGS = {
    "DiffStyle360LoadAppearanceModules": LoadAppearanceModules,
    "DiffStyle360BackViewGenerate": BackViewGenerate,
    "DiffStyle360TurntableCamera": TurntableCamera,
    "DiffStyle360KeyScale": KeyScale,
    "DiffStyle360StyleMask": StyleMask,
    "DiffStyle360StyleBlend": StyleBlend,
    "DiffStyle360StyleFusionSampler": StyleFusionSampler,
}

# ComfyUI 0.8's node search (frontend 1.35) matches only the id and the display name, and only near their
# start: the words users search for ("model loader", "style transfer", "turntable") lead the names.
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiffStyle360LoadAppearanceModules": "DiffStyle360 Model Loader (Appearance Modules)",
    "DiffStyle360BackViewGenerate": "DiffStyle360 Back-View Generate",
    "DiffStyle360TurntableCamera": "DiffStyle360 Turntable Camera (360 views)",
    "DiffStyle360KeyScale": "DiffStyle360 Key Scale",
    "DiffStyle360StyleMask": "DiffStyle360 Style Mask",
    "DiffStyle360StyleBlend": "DiffStyle360 Style Blend",
    "DiffStyle360StyleFusionSampler": "DiffStyle360 Style Transfer (Style Fusion Sampler)",
}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
