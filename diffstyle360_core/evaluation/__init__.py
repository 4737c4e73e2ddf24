"""Table-1 metrics for stylized turntables: identity, style (CLIP), FID/KID, view consistency (ΔD, MEt3R).

The numbers are computed here from features (``stats``); the models that give the features sit behind
small interfaces (``extractors``) and are imported only when a metric runs, so tests swap in tiny
stand-ins and a missing or offline model turns its column into "n/a (why)". Used by the ``evaluate``
command; the ComfyUI nodes never import this package.
"""
