"""Where everything lives in a reproduction or study folder, and how to read its records.

A reproduction (``deepadv reproduce``) is one seed of the experiment grid; a study
(``deepadv study``) is several. Both use one layout::

    OUT/reproduce.json | study.json-manifest   what this folder is (written once): kind, preset, grid
    OUT/data/                                  the simulated dataset (``data_s{k}/`` per data seed in a study)
    OUT/runs/<model>_<method>/                 reproduction run folders; a study's are
    OUT/cells/<model>_<method>_s<seed>/          cells, with the same run-folder layout
    OUT/analysis/<model>_<method>[_s<seed>]/   regular-vs-method analysis of one model (and seed)
    OUT/figures/                               dataset figures (1–2) and the study's plots
    OUT/report.md, report.html                 the report; OUT/findings.json its findings
    OUT/timings.json                           per-stage status, wall time and input fingerprints
    OUT/logs/<stage>.log                       each stage's log (and traceback when it fails)

Both ``reproduce`` and ``report`` (and ``study``) import this module; it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepadversaries.errors import file_error
from deepadversaries.io import read_json

MANIFEST_KIND = "deepadv-reproduce"
STUDY_MANIFEST_KIND = "deepadv-study-manifest"
TIMINGS_KIND = "deepadv-reproduce-timings"
MANIFEST_NAMES = {MANIFEST_KIND: "reproduce.json", STUDY_MANIFEST_KIND: "study-manifest.json"}


@dataclass(frozen=True)
class Layout:
    """The paths of a reproduction (``kind="reproduce"``) or study (``kind="study"``) folder.

    Attributes:
        root: the output folder.
        dataset: an existing dataset folder used instead of simulating one (``--data``,
            e.g. the published Zenodo data); None means the simulated ``OUT/data``.
        kind: ``reproduce`` (one seed, ``runs/``) or ``study`` (seeds, ``cells/``) [default: "reproduce"].
    """

    root: Path
    dataset: Path | None = None
    kind: str = "reproduce"

    @classmethod
    def of(cls, out: str | Path) -> "Layout":
        """The layout of an existing reproduction or study folder (reads its manifest)."""
        manifest = read_manifest(out)
        data = manifest.get("data")
        kind = "study" if manifest["kind"] == STUDY_MANIFEST_KIND else "reproduce"
        return cls(Path(out), Path(data) if data else None, kind)

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAMES[STUDY_MANIFEST_KIND if self.kind == "study" else MANIFEST_KIND]

    def data(self, data_seed: int | None = None) -> Path:
        """The dataset folder (of one data seed in a study that varies the dataset)."""
        if self.dataset is not None:
            return self.dataset
        return self.root / ("data" if data_seed is None else f"data_s{data_seed}")

    @property
    def data_check(self) -> Path:
        """Marker of the check of an external dataset folder."""
        return self.root / "data_check.json"

    @property
    def runs(self) -> Path:
        return self.root / ("cells" if self.kind == "study" else "runs")

    def run(self, model: str, method: str, seed: int | None = None) -> Path:
        """The run folder of one (model, method[, seed]) cell (``timm:NAME`` is written ``timm-NAME``)."""
        return self.runs / self.name(model, method, seed)

    def analysis(self, model: str, method: str, seed: int | None = None) -> Path:
        """The regular-vs-``method`` analysis folder of one model (and seed)."""
        return self.root / "analysis" / self.name(model, method, seed)

    def card(self, model: str, method: str, seed: int | None = None) -> Path:
        """The robustness card folder of one cell (``deepadv study``: ``cards/<cell>``)."""
        return self.root / "cards" / self.name(model, method, seed)

    @property
    def leaderboard(self) -> Path:
        """The study's leaderboard folder: one row per (model, method), pooled over seeds."""
        return self.root / "leaderboard"

    def name(self, model: str, method: str, seed: int | None = None) -> str:
        """A cell's folder and stage name: ``convnet_mmd`` (reproduce), ``convnet_mmd_s0`` (study; without a
        seed: the row of the seeds pooled); ``timm:NAME`` is written ``timm-NAME``, a recipe
        ``regular+survey-mix`` ``regular-survey-mix``."""
        name = f"{model}_{method}".replace(":", "-").replace("+", "-")
        return name if self.kind != "study" or seed is None else f"{name}_s{seed}"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def findings(self) -> Path:
        return self.root / "findings.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of a reproduction or study folder, with a clear error if it is neither."""
    root = Path(out)
    found = [root / name for name in MANIFEST_NAMES.values() if (root / name).is_file()]
    if not found:
        raise file_error(root, "not a reproduction folder (no reproduce.json); make one with 'deepadv reproduce' "
                               "or 'deepadv study'")
    path = found[0]
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("kind") not in MANIFEST_NAMES:
        raise file_error(path, f"not a deepadv manifest (expected \"kind\": \"{MANIFEST_KIND}\")")
    for key, typ in (("preset", str), ("seed", int), ("models", list)):
        if not isinstance(manifest.get(key), typ) or isinstance(manifest.get(key), bool):
            raise file_error(path, f"missing or malformed key {key!r}")
    return manifest


def read_timings(out: str | Path) -> dict[str, Any]:
    """``timings.json`` of a reproduction or study folder (an empty record when there is none yet)."""
    path = Path(out) / "timings.json"
    if not path.is_file():
        return {"kind": TIMINGS_KIND, "stages": {}, "invocations": []}
    timings = read_json(path)
    if not isinstance(timings, dict) or not isinstance(timings.get("stages"), dict):
        raise file_error(path, "not a reproduce timings file (no 'stages' object)")
    timings.setdefault("invocations", [])
    return timings


#: the models of each preset's grid. ``tiny`` and ``quick`` drop ResNet18: on a 2-core CPU one
#: ResNet18 run (11.3 M parameters) costs more than the whole budget of ``quick``; ``paper``
#: runs the paper's full grid and is meant for a GPU.
PRESET_MODELS: dict[str, tuple[str, ...]] = {
    "tiny": ("convnet",),
    "quick": ("convnet",),
    "paper": ("convnet", "resnet18"),
}
DROPPED_MODEL_REASON: dict[str, str] = {
    "tiny": "ResNet18 is not trained in the tiny preset (a seconds-long smoke test).",
    "quick": ("ResNet18 is not trained in the quick preset: one ResNet18 run alone exceeds the "
              "preset's budget on a 2-core CPU. Run the paper preset on a GPU "
              "(or pass --models convnet,resnet18) for Tables 2-3."),
}
