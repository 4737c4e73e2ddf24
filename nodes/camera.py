"""Turntable Camera: which views to render (the pose conditions of the camera ControlNet, facts §3)."""

from __future__ import annotations

from diffstyle360_core import options
from diffstyle360_core.cameras import select_views, user_conditions

from .common import CAMERAS, CATEGORY, MODEL, number, to_image_output, user_errors


class TurntableCamera:
    DESCRIPTION = (
        "Chooses the cameras of the turntable: a number of views evenly spread over a yaw range of the weight "
        "set's condition renders (32 views, 11.25 degrees apart, 0 = front, 180 = back), or your own condition "
        "images. Outputs the cameras for the sampler and a preview of the pose conditions."
    )
    CATEGORY = CATEGORY
    FUNCTION = "cameras"
    RETURN_TYPES = (CAMERAS, "IMAGE")
    RETURN_NAMES = ("cameras", "conditions")
    OUTPUT_TOOLTIPS = (
        "The chosen cameras, in turntable order (the sampler's views come out in this order).",
        "The pose-condition images of those cameras, for a quick look.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL, {"tooltip": "The weight set whose camera-condition renders are used."}),
                "views": number(options.VIEWS, (
                    "Number of views, evenly spread over the yaw range (at most the renders inside the range: "
                    "32 for the full circle of the official set).")),
                "yaw_start": number(options.YAW, "First yaw in degrees (0 = front, 90 = side, 180 = back).",
                                    default=0.0, step=1.0),
                "yaw_end": number(options.YAW, (
                    "Last yaw in degrees, inclusive, going round in the direction of increasing yaw; "
                    "0 to 360 = the full circle."), default=360.0, step=1.0),
            },
            "optional": {
                "conditions": ("IMAGE", {"tooltip": (
                    "Your own pose-condition renders, one per view, in turntable order (square images of a head "
                    "seen from each camera). When connected they are used as they are and views/yaw are ignored.")}),
            },
        }

    def cameras(self, model, views, yaw_start, yaw_end, conditions=None):
        with user_errors("Turntable Camera"):
            if conditions is not None:
                cams = user_conditions(conditions, model.image_size, name="conditions")
            else:
                cams = select_views(
                    model.cameras(),
                    views=options.VIEWS.check(views),
                    yaw_range=(options.YAW.check(yaw_start, "yaw_start"), options.YAW.check(yaw_end, "yaw_end")),
                )
            return (cams, to_image_output(cams.images))
