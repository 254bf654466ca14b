"""The experiment grid as a stage graph: what ``reproduce`` and ``study`` run.

A :class:`Grid` is models × methods × seeds (and, in a study, dataset seeds) at one preset;
:func:`build_stages` turns it into the :class:`~deepadversaries.workflow.stages.Stage` list:

    simulate (or check an existing dataset) → per cell (model, method, seed):
    train → evaluate, attack → per (model, adapted method, seed): analyze (regular vs
    method) → report

in an order that respects the dependencies. Every stage's action is a
``functools.partial`` of a module-level function of this module, so a Dask worker can run
it (:mod:`deepadversaries.workflow.study`); the same stages run in order in ``reproduce``.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepadversaries import DOMAINS, MODELS, PAPER_METHODS, PRESETS, REFERENCE_METHOD, SPLITS
from deepadversaries.analysis.analyze import analyze_runs
from deepadversaries.attacks.campaign import attack_run
from deepadversaries.attacks.searches import search_names
from deepadversaries.card.build import card_run
from deepadversaries.card.leaderboard import HTML_NAME as LEADERBOARD_HTML
from deepadversaries.card.leaderboard import pooled_leaderboard
from deepadversaries.card.render import HTML_NAME as CARD_HTML
from deepadversaries.card.render import render_card
from deepadversaries.config import AttackConfig, SimulateConfig, TrainConfig, check_model_name, split_recipe
from deepadversaries.methods import method_names
from deepadversaries.data.dataset import image_file, label_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, check_choice, file_error
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.formatting import utc_now
from deepadversaries.io import read_json, write_json
from deepadversaries.workflow.layout import PRESET_MODELS, Layout
from deepadversaries.workflow.stages import Stage
from deepadversaries.reporting.report import write_report
from deepadversaries.corruptions.benchmark import robustness_run, why_not_applicable
from deepadversaries.models.runs import attack_dir, last_checkpoint_path
from deepadversaries.simulation.simulate import simulate_dataset
from deepadversaries.training.train import train_model

#: Expected seconds per stage kind, for the ETA: tiny and quick measured on an idle 2-core
#: CPU (quick: a fresh-clone run, 2026-11-29); paper: rough GPU estimates, not yet measured.
#: Keys ``train_<method>``, ``train_<model>`` and ``train_<model>_<method>`` refine ``train``.
EXPECTED_SECONDS: dict[str, dict[str, float]] = {
    "tiny": {"simulate": 4, "train": 2, "evaluate": 1, "attack": 1, "robustness": 2, "analyze": 5, "report": 1,
             "card": 3, "leaderboard": 1},
    "quick": {"simulate": 80, "train": 90, "train_mmd": 180, "evaluate": 4, "attack": 133, "robustness": 40,
              "analyze": 12, "report": 3, "card": 15, "leaderboard": 2},
    "paper": {"simulate": 900, "train": 900, "train_resnet18": 3600, "evaluate": 60, "attack": 600,
              "robustness": 300, "analyze": 180, "report": 30, "card": 60, "leaderboard": 5},
}
#: the survey-corruption benchmark's severities in each preset's pipeline (every corruption;
#: ``quick`` trims to three severities to stay in its budget; ``deepadv robustness`` runs all five)
ROBUSTNESS_SEVERITIES: dict[str, tuple[int, ...]] = {"tiny": (1, 5), "quick": (1, 3, 5), "paper": (1, 2, 3, 4, 5)}
#: the card level (``deepadv card --level``) that names each preset's protocol on a study's cards
CARD_LEVELS: dict[str, str] = {"tiny": "tiny", "quick": "quick", "paper": "full"}


def expected_train_seconds(preset: str, model: str, method: str) -> float:
    """Expected seconds of one training run (the most specific key of EXPECTED_SECONDS)."""
    table = EXPECTED_SECONDS[preset]
    for key in (f"train_{model}_{method}", f"train_{model}", f"train_{method}", "train"):
        if key in table:
            return float(table[key])
    return 60.0


@dataclass(frozen=True)
class Grid:
    """The experiments of a reproduction or study.

    Attributes:
        preset: the size preset of every stage.
        models: the architectures [default: the preset's].
        methods: the training recipes, each a method optionally joined to a training augmentation
            (``mmd``, ``regular+survey-mix``: :func:`~deepadversaries.config.split_recipe`);
            ``regular`` is always among them (the reference).
        seeds: training and attack seeds, one cell per seed [default: (0,)].
        data_seed: the simulated dataset's seed [default: 0].
        vary_data: simulate one dataset per seed, with that seed (a study's ``--data-seeds``)
            [default: False: one dataset for every seed].
        attack: overrides of the preset's attack settings (e.g. a study's larger campaign).
        threads: CPU threads of each stage (None: torch's default) [default: None].
        figures: draw the analysis figures of every seed (False: the first seed only) [default: True].
        robustness: run the survey-corruption benchmark on every cell [default: True].
        cards: write a robustness card of every cell from its stages' files (``deepadv card
            --no-run``) and, in a study, the leaderboard pooled over seeds [default: False].
        attacks: the one-pixel searches: ``de`` (always: the paper's, which the analysis reads),
            and optionally ``exhaustive`` and ``sparse-rs`` on the same images [default: ("de",)].
        device: where to train and attack: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        workers: processes simulating the dataset [default: 1].
    """

    preset: str = "quick"
    models: tuple[str, ...] = ("convnet",)
    methods: tuple[str, ...] = PAPER_METHODS
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0
    vary_data: bool = False
    attack: tuple[tuple[str, Any], ...] = ()
    threads: int | None = None
    figures: bool = True
    robustness: bool = True
    cards: bool = False
    attacks: tuple[str, ...] = ("de",)
    device: str = "auto"
    workers: int = 1

    def __post_init__(self) -> None:
        check_choice(self.preset, PRESETS, "preset")
        if not self.models:
            raise OptionError("--models is empty; choose from " + ", ".join(MODELS))
        for m in self.models:
            check_model_name(m, trainable=True)
        for m in self.methods:
            split_recipe(m)  # a registered method (built in or added by register_method)[+ an augmentation]
        for search in self.attacks:
            check_choice(search, search_names(), "search")
        if "de" not in self.attacks:
            raise OptionError("--attacks must include de: the latent-space analysis reads its campaign")
        if REFERENCE_METHOD not in self.methods:
            raise OptionError(f"--methods must include {REFERENCE_METHOD!r}: every other method is compared with it")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise OptionError(f"seeds must be non-negative integers, got {self.seeds!r}")

    @property
    def adapted_methods(self) -> tuple[str, ...]:
        """The methods compared with the reference (every method but ``regular``)."""
        return tuple(m for m in self.methods if m != REFERENCE_METHOD)

    def cells(self) -> list[tuple[str, str, int]]:
        """Every (model, method, seed)."""
        return [(model, method, seed) for seed in self.seeds for model in self.models for method in self.methods]


def resolve_models(preset: str, models: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """The preset's models, or the user's list (order kept, duplicates dropped), validated."""
    if models is None:
        return PRESET_MODELS[preset]
    chosen = tuple(dict.fromkeys(m.strip().lower() for m in models if m.strip()))
    if not chosen:
        raise OptionError("--models is empty; choose from " + ", ".join(MODELS))
    for m in chosen:
        check_model_name(m, trainable=True)
    return chosen


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """Training recipes from ``"regular,mmd,regular+survey-mix"`` (order kept); ``regular`` must be among them."""
    items = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not items:
        raise OptionError("--methods is empty; choose from " + ", ".join(method_names()))
    for m in items:
        split_recipe(m)
    if REFERENCE_METHOD not in items:
        raise OptionError(f"--methods must include {REFERENCE_METHOD!r}: every other method is compared with it")
    return tuple(dict.fromkeys([REFERENCE_METHOD] + items))


def parse_list(text: str | Sequence[str]) -> tuple[str, ...]:
    """A comma-separated option (``"de,exhaustive"``) as a tuple, order kept, duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip()))


# --------------------------------------------------------------------------------------
# stage actions: module-level, so that Dask can ship them to a worker
# --------------------------------------------------------------------------------------
def simulate_action(fresh: bool, *, out: Path, config: SimulateConfig, workers: int) -> Any:
    return simulate_dataset(out, config, workers=workers, overwrite=fresh)


def check_data_action(fresh: bool, *, layout: Layout) -> Any:
    return check_external_dataset(layout)


def train_action(fresh: bool, *, data: Path, run_dir: Path, config: TrainConfig, device: str) -> Any:
    resume = not fresh and last_checkpoint_path(run_dir).is_file()
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # an earlier attempt that left nothing to resume from
    return train_model(data, run_dir, config, device=device, resume=resume)


def evaluate_action(fresh: bool, *, run_dir: Path, data: Path, device: str) -> Any:
    return evaluate_run(run_dir, data, device=device)


def attack_action(fresh: bool, *, run_dir: Path, data: Path, config: AttackConfig, device: str,
                  threads: int | None = None) -> Any:
    return attack_run(run_dir, config, data=data, device=device, threads=threads,
                      adaptive_threads=threads is None)


def robustness_action(fresh: bool, *, run_dir: Path, data: Path, baseline: Path | None, severities: tuple[int, ...],
                      seed: int, device: str) -> Any:
    # both domains (Y1 into RUN/robustness_Y1, then Y10 into RUN/robustness, whose summary marks the stage done);
    # imported data whose noise is not the survey model's is warned about, not refused, inside a pipeline
    return robustness_run(run_dir, data, severities=severities, seed=seed, baseline=baseline, device=device,
                          overwrite=True, domain="both", noise_check="warn")


def analyze_action(fresh: bool, *, regular: Path, adapted: Path, out: Path, seed: int, preset: str,
                   device: str, figures: bool = True) -> Any:
    if out.exists():
        shutil.rmtree(out)  # analysis has nothing to resume; start clean
    return analyze_runs(regular, adapted, out, seed=seed, preset=preset, device=device, figures=figures)


def report_action(fresh: bool, *, root: Path) -> Any:
    return write_report(root)


def card_action(fresh: bool, *, run_dir: Path, out: Path, data: Path, level: str, seed: int, device: str) -> Any:
    # the card of what the cell's stages wrote (no stage is re-run: --no-run), rendered next to card.json
    card = card_run(run_dir, out, data=data, level=level, seed=seed, device=device, run_missing=False,
                    overwrite=True)
    return render_card(card, out)


def leaderboard_action(fresh: bool, *, cell_cards: dict[str, tuple[Path, ...]], out: Path) -> Any:
    return pooled_leaderboard(cell_cards, out)


# --------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------
def build_stages(layout: Layout, grid: Grid) -> list[Stage]:
    """The data and cell stages of a grid (no report), in an order that respects every dependency.

    With ``grid.vary_data`` each seed trains on its own simulated dataset (``data_s{seed}``).
    """
    stages: list[Stage] = []
    data_seeds = grid.seeds if grid.vary_data else (None,)
    data_stage = {}
    for data_seed in data_seeds:
        stage = _data_stage(layout, grid, data_seed)
        stages.append(stage)
        data_stage[data_seed] = stage
    for seed in grid.seeds:
        key = seed if grid.vary_data else None
        for model in grid.models:
            stages += _cell_stages(layout, grid, model, seed, layout.data(key), data_stage[key].name)
    return stages


def report_stage(layout: Layout, grid: Grid, upstream: list[Stage]) -> Stage:
    """The reproduction report, after every other stage."""
    return Stage("report", "report", layout.report_html, tuple(s.name for s in upstream),
                 (layout.report_md, layout.report_html, layout.findings, layout.figures),
                 functools.partial(report_action, root=layout.root), EXPECTED_SECONDS[grid.preset]["report"])


def cell_tag(layout: Layout, model: str, method: str, seed: int) -> str:
    """The name of a cell in stage names: ``convnet_mmd`` (reproduce) or ``convnet_mmd_s0`` (study)."""
    return layout.name(model, method, seed)


def _data_stage(layout: Layout, grid: Grid, data_seed: int | None = None) -> Stage:
    """Simulate the dataset (of one data seed), or check the user's existing dataset folder."""
    expected = EXPECTED_SECONDS[grid.preset]
    if layout.dataset is None:
        seed = grid.data_seed if data_seed is None else data_seed
        out = layout.data(data_seed)
        config = SimulateConfig.from_preset(grid.preset, seed=seed)
        name = "simulate" if data_seed is None else f"simulate:s{data_seed}"
        return Stage(name, "simulate", out / "dataset.json", (), (out,),
                     functools.partial(simulate_action, out=out, config=config, workers=grid.workers),
                     expected["simulate"],
                     adopt_check=adopt_check(out / "dataset.json", {"config.preset": grid.preset, "seed": seed}))
    return Stage("data", "data", layout.data_check, (), (layout.data_check,),
                 functools.partial(check_data_action, layout=layout), 5.0, external_dataset_files(layout.data()))


def _cell_stages(layout: Layout, grid: Grid, model: str, seed: int, data: Path, data_stage: str) -> list[Stage]:
    """train, evaluate and attack of every method of one (model, seed), then the analyses."""
    expected = EXPECTED_SECONDS[grid.preset]
    device_type = resolve_device(grid.device).type
    stages: list[Stage] = []
    attack_config = AttackConfig.from_preset(grid.preset, seed=seed, **dict(grid.attack))
    for method in grid.methods:
        run_dir, tag = layout.run(model, method, seed), cell_tag(layout, model, method, seed)
        base, augment = split_recipe(method)
        config = TrainConfig.from_preset(grid.preset, model=model, method=base, seed=seed, device_type=device_type,
                                         **({"augment": augment} if augment != "none" else {}))
        identity = {"model": model, "method": base, "preset": grid.preset, "seed": seed, "data": str(data.resolve())}
        if augment != "none":  # (run folders written before --augment existed have no such key: none)
            identity["augment"] = augment
        stages.append(Stage(f"train:{tag}", "train", run_dir / "training.json", (data_stage,), (run_dir,),
                            functools.partial(train_action, data=data, run_dir=run_dir, config=config,
                                              device=grid.device),
                            expected_train_seconds(grid.preset, model, method),
                            adopt_check=adopt_check(run_dir / "config.json", identity)))
    for method in grid.methods:
        run_dir, tag = layout.run(model, method, seed), cell_tag(layout, model, method, seed)
        stages.append(Stage(f"evaluate:{tag}", "evaluate", run_dir / "metrics.json", (f"train:{tag}",),
                            (run_dir / "metrics.json", run_dir / "predictions.npz", run_dir / "reliability.png"),
                            functools.partial(evaluate_action, run_dir=run_dir, data=data, device=grid.device),
                            expected["evaluate"]))
    for method in grid.methods:
        run_dir, tag = layout.run(model, method, seed), cell_tag(layout, model, method, seed)
        stages.append(Stage(f"attack:{tag}", "attack", run_dir / "attack" / "summary.json", (f"train:{tag}",),
                            (run_dir / "attack",),
                            functools.partial(attack_action, run_dir=run_dir, data=data, config=attack_config,
                                              device=grid.device, threads=grid.threads),
                            expected["attack"],
                            adopt_check=adopt_check(run_dir / "attack" / "summary.json",
                                                    {"settings.preset": grid.preset, "settings.seed": seed})))
    for search in (a for a in grid.attacks if a != "de"):
        for method in grid.methods:
            run_dir, tag = layout.run(model, method, seed), cell_tag(layout, model, method, seed)
            config = dataclasses.replace(attack_config, search=search)
            stages.append(Stage(f"attack-{search}:{tag}", "attack", attack_dir(run_dir, search) / "summary.json",
                                (f"train:{tag}", f"attack:{tag}"), (attack_dir(run_dir, search),),
                                functools.partial(attack_action, run_dir=run_dir, data=data, config=config,
                                                  device=grid.device, threads=grid.threads),
                                expected["attack"]))
    if grid.robustness and (layout.dataset is None or why_not_applicable(data) is None):
        stages += _robustness_stages(layout, grid, model, seed, data)
    if grid.cards:
        stages += _card_stages(layout, grid, model, seed, data, [s.name for s in stages])
    for method in grid.adapted_methods:
        out = layout.analysis(model, method, seed)
        pair = (cell_tag(layout, model, REFERENCE_METHOD, seed), cell_tag(layout, model, method, seed))
        stages.append(Stage(f"analyze:{cell_tag(layout, model, method, seed)}", "analyze", out / "analysis.json",
                            tuple(f"{k}:{t}" for k in ("train", "attack", *(f"attack-{a}" for a in grid.attacks
                                                                           if a != "de")) for t in pair), (out,),
                            functools.partial(analyze_action, regular=layout.run(model, REFERENCE_METHOD, seed),
                                              adapted=layout.run(model, method, seed), out=out, seed=seed,
                                              preset=grid.preset, device=grid.device,
                                              figures=grid.figures or seed == grid.seeds[0]),
                            expected["analyze"]))
    return stages


def _card_stages(layout: Layout, grid: Grid, model: str, seed: int, data: Path, cell: list[str]) -> list[Stage]:
    """The robustness card of each method's run, from the files of the cell's evaluate, attack and
    robustness stages (``cell``: the names of the cell's stages so far)."""
    stages = []
    for method in grid.methods:
        tag = cell_tag(layout, model, method, seed)
        depends = tuple(name for name in cell if name.split(":", 1)[0] != "train" and name.endswith(f":{tag}"))
        out = layout.card(model, method, seed)
        stages.append(Stage(f"card:{tag}", "card", out / CARD_HTML, depends, (out,),
                            functools.partial(card_action, run_dir=layout.run(model, method, seed), out=out,
                                              data=data, level=CARD_LEVELS[grid.preset], seed=seed,
                                              device=grid.device),
                            EXPECTED_SECONDS[grid.preset]["card"]))
    return stages


def leaderboard_stage(layout: Layout, grid: Grid, upstream: list[Stage]) -> Stage:
    """The leaderboard of the cells' cards, one row per (model, method) pooled over the seeds."""
    cell_cards = {layout.name(model, method): tuple(layout.card(model, method, s) for s in grid.seeds)
                  for model in grid.models for method in grid.methods}
    depends = tuple(s.name for s in upstream if s.kind == "card")
    out = layout.leaderboard
    return Stage("leaderboard", "leaderboard", out / LEADERBOARD_HTML, depends, (out,),
                 functools.partial(leaderboard_action, cell_cards=cell_cards, out=out),
                 EXPECTED_SECONDS[grid.preset]["leaderboard"])


def _robustness_stages(layout: Layout, grid: Grid, model: str, seed: int, data: Path) -> list[Stage]:
    """The corruption benchmark of each method's run; every other method's errors are relative to
    the regular run of the same seed (mCE), whose benchmark runs first so that they reuse it."""
    stages = []
    regular = layout.run(model, REFERENCE_METHOD, seed)
    for method in grid.methods:
        run_dir, tag = layout.run(model, method, seed), cell_tag(layout, model, method, seed)
        reference = method == REFERENCE_METHOD
        regular_tag = cell_tag(layout, model, REFERENCE_METHOD, seed)
        depends = (f"train:{tag}",) + (() if reference else (f"robustness:{regular_tag}",))
        stages.append(Stage(f"robustness:{tag}", "robustness", run_dir / "robustness" / "summary.json", depends,
                            (run_dir / "robustness", run_dir / "robustness_Y1"),
                            functools.partial(robustness_action, run_dir=run_dir, data=data,
                                              baseline=None if reference else regular,
                                              severities=ROBUSTNESS_SEVERITIES[grid.preset], seed=seed,
                                              device=grid.device),
                            EXPECTED_SECONDS[grid.preset]["robustness"]))
    return stages


def adopt_check(path: Path, expected: dict[str, Any]) -> Callable[[], None]:
    """A check that finished outputs found in the folder (not made by this pipeline) fit it."""
    return functools.partial(_check_adopted, path=path, expected=expected)


def _check_adopted(*, path: Path, expected: dict[str, Any]) -> None:
    record = read_json(path)
    for dotted, want in expected.items():
        have: Any = record
        for part in dotted.split("."):
            have = have.get(part) if isinstance(have, dict) else None
        if have != want:
            raise file_error(path, f"{dotted} is {have!r} but this reproduction needs {want!r}; remove the "
                                   "folder or choose another --out")


def external_dataset_files(path: Path) -> tuple[Path, ...]:
    """The files of a dataset folder whose change invalidates everything trained on it."""
    names = [label_file(s) for s in SPLITS] + [image_file(d, s) for d in DOMAINS for s in SPLITS] + ["dataset.json"]
    return tuple(path / n for n in names)


def check_external_dataset(layout: Layout) -> dict[str, Any]:
    """Validate an existing dataset folder (every file, both domains) and record what it holds."""
    ds = load_dataset(layout.data())
    if not ds.has_domain("Y1"):
        raise file_error(layout.data(), "has no Y1 images (images_Y1_{train,valid,test}.npy); the study needs "
                                        "both domains")
    ds.validate()
    record = {"kind": "deepadv-data-check", "data": str(layout.data()), "image_shape": list(ds.image_shape),
              "counts": {s: int(len(ds.labels(s))) for s in SPLITS}, "domains": list(ds.domains),
              "classes": list(ds.classes), "bands": list(ds.bands),
              "normalisation": {d: ds.describe_normalisation(d) for d in ds.domains},
              "robustness": why_not_applicable(layout.data()) or "applies",
              "has_metadata": bool(ds.metadata), "has_catalog": bool(ds.catalog("train")), "checked": utc_now()}
    write_json(layout.data_check, record)
    return record
