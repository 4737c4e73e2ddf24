"""Turntable Camera: which views to render (the pose conditions of the camera ControlNet, facts §3).

The views are the core's :func:`~diffstyle360_core.cameras.select_views` of the yaw
range (one constant step of the condition renders, the front included when the range
holds it), so the node, the command line and the library pick the same views.
"""

from __future__ import annotations

from diffstyle360_core import options
from diffstyle360_core.cameras import CameraSet, TooManyViewsError, select_views, user_conditions
from diffstyle360_core.config import OFFICIAL_VIEWS

from .common import Cameras, DiffStyle360Error, Model, number, schema, to_image_output, user_errors
from .host import io


def evenly_spaced(camera_set: CameraSet, views: int, yaw_start: float, yaw_end: float) -> CameraSet:
    """``views`` renders of ``camera_set`` inside the yaw range, evenly spaced, the front included."""
    try:
        return select_views(camera_set, views=views, yaw_range=(yaw_start, yaw_end))
    except TooManyViewsError as err:  # the node's own advice: its inputs, not the core's arguments
        where = "in all" if err.whole_set else f"between yaw {yaw_start:g} and {yaw_end:g} degrees"
        raise DiffStyle360Error(
            f"Turntable Camera: {views} views asked but the weight set has {err.available} camera renders {where}; "
            f"use views <= {err.available}, widen the yaw range, or connect your own condition images.") from err


def yaw_text(camera_set: CameraSet) -> str:
    return ", ".join(f"{y:g}" for y in camera_set.yaws_deg)


class TurntableCamera(io.ComfyNode):
    SEARCH_ALIASES = ["turntable", "360", "orbit", "camera", "novel views", "yaw"]

    @classmethod
    def define_schema(cls):
        return schema(
            "DiffStyle360TurntableCamera", "DiffStyle360 Turntable Camera (360 views)",
            description=(
                "Turntable / 360-degree orbit: chooses the cameras of the turntable from the weight set's condition "
                "renders (32 views, 11.25 degrees apart, 0 = front, 180 = back): a number of views at one even step "
                "within a yaw range, always including the front when the range holds it, or your own condition "
                "images. Outputs the cameras for the sampler, a preview of the pose conditions and the yaws used."),
            inputs=[
                Model.Input("model", tooltip="The weight set whose camera-condition renders are used."),
                number("views", options.VIEWS, (
                    f"Number of views, at one even step within the yaw range (a multiple of the renders' spacing, "
                    f"11.25 degrees for the official set); the front is always included when the range holds it. "
                    f"At most the renders inside the range: {OFFICIAL_VIEWS} for the full circle of the official "
                    f"set. Views that divide {OFFICIAL_VIEWS} (4, 8, 16, 32) cover the full circle."),
                    max=OFFICIAL_VIEWS),
                number("yaw_start", options.YAW, "First yaw in degrees (0 = front, 90 = side, 180 = back).",
                       default=0.0, step=1.0),
                number("yaw_end", options.YAW, (
                    "Last yaw in degrees, inclusive, going round in the direction of increasing yaw; "
                    "0 to 360 = the full circle."), default=360.0, step=1.0),
                io.Image.Input("conditions", optional=True, tooltip=(
                    "Your own pose-condition renders, one per view, in turntable order (square images of a head "
                    "seen from each camera). When connected they are used as they are and views/yaw are ignored.")),
            ],
            # new outputs go at the end: saved workflows link outputs by position
            outputs=[
                Cameras.Output("cameras", tooltip=(
                    "The chosen cameras, in turntable order (the sampler's views come out in this order).")),
                io.Image.Output("conditions", tooltip="The pose-condition images of those cameras, for a quick look."),
                io.String.Output("yaws", tooltip=(
                    "The yaws of the chosen views in degrees, in order (0 = front, 90 = side, 180 = back), e.g. for "
                    "Preview Any.")),
            ],
            search_aliases=cls.SEARCH_ALIASES,
        )

    @classmethod
    def execute(cls, model, views, yaw_start, yaw_end, conditions=None):
        with user_errors("Turntable Camera"):
            if conditions is not None:
                cams = user_conditions(conditions, model.image_size, name="conditions")
            else:
                cams = evenly_spaced(
                    model.cameras(),
                    options.VIEWS.check(views),
                    options.YAW.check(yaw_start, "yaw_start"),
                    options.YAW.check(yaw_end, "yaw_end"),
                )
            return io.NodeOutput(cams, to_image_output(cams.images), yaw_text(cams))
