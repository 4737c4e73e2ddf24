"""DiffStyle360 core: 360° head stylization on a DiffPortrait360 backbone.

Plain torch + diffusers; never imports ComfyUI. Each module mirrors one box of
the paper's Fig. 2 (see README, "Code map").
"""

__version__ = "0.1.0"
