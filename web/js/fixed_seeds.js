// New DiffStyle360 nodes whose output is meant to be reused start with a "fixed" seed.
//
// ComfyUI's frontend gives every seed widget a "control after generate" of "randomize"
// (the node definition cannot choose another default). For Back-View Generate that
// would re-seed on every Queue, so its back view — and everything downstream — would
// never come from the cache. Only freshly created nodes are changed: a loaded workflow
// restores its saved value after this runs.
import { app } from "../../../scripts/app.js";  // served at /extensions/diffstyle360/js/

const FIXED_SEED_NODES = new Set(["DiffStyle360BackViewGenerate"]);

app.registerExtension({
  name: "DiffStyle360.FixedSeeds",
  nodeCreated(node) {
    if (!FIXED_SEED_NODES.has(node.comfyClass)) return;
    for (const widget of node.widgets ?? []) {
      if (widget.name === "control_after_generate") widget.value = "fixed";
    }
  },
});
