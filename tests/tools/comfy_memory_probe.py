"""A measuring aid for a ComfyUI you test the pack in (not part of the pack): link or copy this file into
that ComfyUI's ``custom_nodes/`` and ``measure_host_memory.py`` reads from it what the HTTP API does not show.

GET /ds360_probe/loaded: ComfyUI's loaded-model list (class, model id, size), how many DiffStyle360 models
any object still holds (after a full gc) and the process RSS. POST /ds360_probe/trim: glibc's
``malloc_trim(0)``, RSS before and after (how much of RSS is freed memory the allocator kept).
It defines no nodes.
"""
import ctypes
import gc

import comfy.model_management as mm
import server
from aiohttp import web

NODE_CLASS_MAPPINGS = {}


def _rss_gib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    return None


@server.PromptServer.instance.routes.get("/ds360_probe/loaded")
async def loaded(request):
    models = []
    for entry in mm.current_loaded_models:
        patcher = entry.model
        if patcher is not None:
            models.append({"class": type(patcher.model).__name__, "model_id": id(patcher.model),
                           "size_mb": round(patcher.model_size() / 2 ** 20, 1)})
    gc.collect()
    live = sum(type(o).__name__ == "DiffStyle360Model" for o in gc.get_objects())
    return web.json_response({"loaded": models, "live_diffstyle360_models": live, "rss_gib": _rss_gib()})


@server.PromptServer.instance.routes.post("/ds360_probe/trim")
async def trim(request):
    before = _rss_gib()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return web.json_response({"before": before, "after": _rss_gib()})
