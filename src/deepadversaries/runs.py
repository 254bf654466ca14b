"""The run folder: where a trained model, its config, logs and results live."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import file_error
from .io import read_json

RUN_KIND = "deepadv-run"
CONFIG_NAME = "config.json"
TRAINING_DONE = "training.json"
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "model": str, "method": str, "data": str, "seed": int,
}


def config_path(run: str | Path) -> Path:
    return Path(run) / CONFIG_NAME


def best_checkpoint_path(run: str | Path) -> Path:
    return Path(run) / "checkpoints" / "best.pt"


def last_checkpoint_path(run: str | Path) -> Path:
    return Path(run) / "checkpoints" / "last.ckpt"


def attack_dir(run: str | Path) -> Path:
    return Path(run) / "attack"


def read_run_config(run: str | Path) -> dict[str, Any]:
    """The resolved config of a run folder; a clear error if the folder is not a run."""
    run = Path(run)
    if not run.is_dir():
        raise file_error(run, "run folder not found")
    path = config_path(run)
    if not path.is_file():
        raise file_error(run, f"not a run folder (no {CONFIG_NAME}); make one with 'deepadv train'")
    config = read_json(path)
    if not isinstance(config, dict) or config.get("kind") != RUN_KIND:
        raise file_error(path, f"not a deepadv run config (expected \"kind\": \"{RUN_KIND}\")")
    for key, typ in REQUIRED_KEYS.items():
        if key not in config:
            raise file_error(path, f"missing key {key!r}")
        if not isinstance(config[key], typ) or isinstance(config[key], bool):
            raise file_error(path, f"key {key!r} has the wrong type ({type(config[key]).__name__})")
    return config
