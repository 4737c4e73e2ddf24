"""What makes two training runs the same run: the weights, the data and the recipe settings.

A checkpoint records the fingerprint of the run that wrote it, and a resumed run compares
it with its own before it loads anything (:func:`differences`): resuming another run's
state (other weights, data, seed, learning rate, …) would silently train something
nobody asked for. Weights and data are identified by their content (CRC-32 of every
file the run reads, with its name and size), not by their paths, so a moved or copied
folder is still the same data.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence

from .config import TrainConfig

#: Settings that change what a step computes; ``steps``, logging, previews, workers and the device do not.
RECIPE_KEYS = ("mode", "seed", "learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay",
               "max_grad_norm", "gradient_accumulation_steps", "condition_dropout", "views_per_sample",
               "view_stride", "window", "tau", "pairing", "mask_mode", "mixed_precision")
_CHUNK = 1 << 22


def file_crc32(path: Path) -> str:
    """CRC-32 of a file's bytes as 8 hex digits (read in chunks; the checksum zip and PNG use)."""
    crc = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def files_digest(root: Path, files: Iterable[Path]) -> str:
    """One SHA-256 over (path relative to ``root``, size, CRC-32) of each file, in name order."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0{file_crc32(path)}\n".encode())
    return h.hexdigest()


def weight_files(main_folder: Path) -> List[Path]:
    """The files ``load_model`` reads from a converted main folder: config.json and the component files."""
    return [p for p in main_folder.iterdir() if p.is_file() and not p.name.startswith(".")
            and (p.name == "config.json" or p.suffix == ".safetensors")]


def data_files(samples: Sequence[Any]) -> List[Path]:
    """The images a run trains on (references, targets, camera conditions) of validated samples."""
    out: List[Path] = []
    for s in samples:
        out += list(s.references.values()) + list(s.targets) + list(s.cameras)
    return out


def run_fingerprint(config: TrainConfig, main_folder: Path, data_root: Path, samples: Sequence[Any]) -> Dict[str, Any]:
    """JSON-ready identity of a run: weights and data (content digests, with their folders for messages) + recipe."""
    main_folder, data_root = Path(main_folder), Path(os.fspath(data_root)).expanduser()  # as the files were listed
    settings = config.to_dict()
    return {
        "weights": {"digest": files_digest(main_folder, weight_files(main_folder)),
                    "folder": str(main_folder.resolve())},
        "data": {"digest": files_digest(data_root, data_files(samples)), "folder": str(data_root.resolve())},
        "recipe": {k: settings[k] for k in RECIPE_KEYS},
    }


def differences(ours: Mapping[str, Any], theirs: Mapping[str, Any], where: str = "the checkpoint") -> List[str]:
    """What differs between this run's fingerprint and one recorded in ``where``, one phrase each ([] = same run)."""
    out: List[str] = []
    for part in ("weights", "data"):
        if ours[part]["digest"] != theirs[part]["digest"]:
            out.append(f"other {part} (this run: {ours[part]['folder']}, {where}: {theirs[part]['folder']})")
    recipe, recorded = ours["recipe"], theirs["recipe"]
    for key in RECIPE_KEYS:
        if recipe.get(key) != recorded.get(key):
            out.append(f"{key} {recipe.get(key)!r} here, {recorded.get(key)!r} in {where}")
    return out


def check_fingerprint(value: Any) -> str:
    """'' if ``value`` has the shape of a fingerprint, else what is wrong (for the file's error message)."""
    if not isinstance(value, dict):
        return "fingerprint is not a mapping"
    for part in ("weights", "data"):
        entry = value.get(part)
        if not (isinstance(entry, dict) and isinstance(entry.get("digest"), str)
                and isinstance(entry.get("folder"), str)):
            return f"fingerprint.{part} must hold a digest and a folder"
    recipe = value.get("recipe")
    if not isinstance(recipe, dict) or set(recipe) != set(RECIPE_KEYS):
        return "fingerprint.recipe must hold exactly the recipe settings " + ", ".join(RECIPE_KEYS)
    bad = [k for k, v in recipe.items() if not (v is None or isinstance(v, (str, int, float, bool)))]
    if bad:
        return f"fingerprint.recipe.{bad[0]} is not a plain value"
    return ""
