"""ComfyUI nodes: a thin layer over ``diffstyle360_core`` (one file per node group).

The node set (Load Appearance Modules, Back-View Generate, Style Fusion Sampler,
Key Scale, Style Mask, Style Blend, Turntable Camera) is the next milestone; the
mappings stay empty until then so the pack loads cleanly.
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
