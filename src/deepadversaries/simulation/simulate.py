"""The mock dataset: quotas, workers, resumption, augmentation, splits, writing (SPEC 3.3-3.6).

Every galaxy slot ``k`` gets a target class from the quotas (the paper's 57/33/10 %
mix, shuffled with the seed). The slot's own generator, seeded by (seed, k), draws a
family from ``PROPOSALS[target]`` (families chosen with the quotas in mind, SPEC 3.2),
draws the galaxy, renders its noiseless r band, measures Gini-M20 and keeps the galaxy
only if the measurement is not flagged bad (statmorph's flag 2: the Petrosian radius not
found, the centroid or the asymmetry centre lost) and its class is the target; otherwise
it draws again. The flag (0 good, 1 suspect) is written to ``catalog_*.csv``. So the class counts equal
the quotas exactly, each class holds every family that lands in it, and a galaxy
depends on (seed, k) only: the arrays are bit-identical whatever the number of
workers, and whether or not the run was interrupted.

Work is done in shards of ``SHARD_SIZE`` slots, each written atomically to
``OUT/.work/``; a run that is stopped resumes from the shards already there. At the
end the shards are assembled into the dataset folder (split, merger augmentation,
catalogue), ``dataset.json`` is written last, and ``.work`` is removed.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import CLASSES, SPLITS, __version__
from deepadversaries.simulation import galaxies, morphology, survey
from deepadversaries.config import SPLIT_MODES, SimulateConfig
from deepadversaries.data.dataset import STRETCH_SAMPLE, image_file, label_file, stretch_constants
from deepadversaries.data.writer import catalog_file, check_output_folder, clear_dataset_files, reserve_blocks
from deepadversaries.errors import DeepAdvError, OptionError, check_choice, choice_list, file_error
from deepadversaries.io import (
    LOCK_NAME, OutputLock, atomic_path, read_json, remove_temporaries, write_csv, write_json, write_npy,
    write_npz,
)
from deepadversaries.progress import info, make_progress

#: 2: galaxies whose morphology measurement is flagged bad are rejected, the flag is catalogued
SIMULATOR_VERSION = 2
#: statmorph's flag of a bad measurement (0 good, 1 suspect, 2 bad): such galaxies are redrawn
BAD_MORPHOLOGY_FLAG = 2
#: the paper's galaxies per class before augmentation: spiral, elliptical, merger
PAPER_COUNTS: tuple[int, int, int] = (14312, 8151, 2542)
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.7, "valid": 0.1, "test": 0.2}
#: merger augmentation (SPEC 3.4): the original and four flips/rotations
AUGMENTATIONS: tuple[str, ...] = ("none", "hflip", "vflip", "rot90", "rot180")
#: P(family | target class), families in galaxies.FAMILIES order (spiral, elliptical, merger).
#: Chosen for acceptance: the PSF moves most compact ellipticals into the spiral region, so
#: spiral targets also try ellipticals and mergers, and merger targets try only mergers.
PROPOSALS: dict[int, tuple[float, float, float]] = {
    0: (0.75, 0.20, 0.05),
    1: (0.10, 0.90, 0.00),
    2: (0.00, 0.00, 1.00),
}
MAX_DRAWS = 2000
SHARD_SIZE = 25
WORK_DIR = ".work"
CATALOG_FIELDS: tuple[str, ...] = (
    "galaxy_id", "augmentation", "family", "label", "gini", "m20", "morphology_flag", "rpetro_arcsec", "r_half_arcsec",
    "mag_g", "mag_r", "mag_i", "r_eff_arcsec", "sersic_n", "axis_ratio", "bulge_fraction", "g_r", "r_i",
    "n_members", "separation_arcsec", "flux_ratio",
    *(f"snr_{b}_{d}" for d in survey.DEPTHS for b in survey.BANDS),
    "draws", "seed",
)


# -- configuration ------------------------------------------------------------------


def class_quotas(n_galaxies: int) -> tuple[int, int, int]:
    """Galaxies per class (spiral, elliptical, merger) in the paper's proportions."""
    total = sum(PAPER_COUNTS)
    spiral = int(round(n_galaxies * PAPER_COUNTS[0] / total))
    elliptical = int(round(n_galaxies * PAPER_COUNTS[1] / total))
    return spiral, elliptical, n_galaxies - spiral - elliptical


def split_sizes(n: int) -> dict[str, int]:
    """Galaxies of one class per split: 70:10:20, at least one in each split."""
    valid = max(1, int(round(n * SPLIT_FRACTIONS["valid"])))
    test = max(1, int(round(n * SPLIT_FRACTIONS["test"])))
    return {"train": n - valid - test, "valid": valid, "test": test}


def min_galaxies() -> int:
    """The smallest number of galaxies whose quotas give every class at least one galaxy per split."""
    n = 3
    while min(class_quotas(n)) < len(SPLITS):
        n += 1
    return n


def dataset_config(config: SimulateConfig) -> dict[str, Any]:
    """The settings as ``dataset.json`` records them: ``config`` plus the simulator's constants.

    Raises:
        OptionError: when ``n_galaxies`` is too few for every class to reach every split.
    """
    n = config.n_galaxies
    if n < min_galaxies():
        raise OptionError(
            f"--n-galaxies {n} is too few for the class quotas: {dict(zip(CLASSES, class_quotas(n)))} leaves "
            f"a class without a galaxy in some split; use at least {min_galaxies()}")
    return {
        "kind": "deepadv-simulate",
        "simulator_version": SIMULATOR_VERSION,
        "preset": config.preset,
        "n_galaxies": n,
        "quotas": dict(zip(CLASSES, class_quotas(n))),
        "seed": config.seed,
        "split_mode": config.split_mode,
        "split_fractions": SPLIT_FRACTIONS,
        "brightness": float(config.brightness),
        "mag_r_median": galaxies.MAG_R_MEDIAN - 2.5 * float(np.log10(config.brightness)),
        "mag_r_sigma": galaxies.MAG_R_SIGMA,
        "proposals": {CLASSES[c]: dict(zip(galaxies.FAMILIES, p)) for c, p in PROPOSALS.items()},
        "segmap_fraction": morphology.SEGMAP_FRACTION,
        "image_size": survey.IMAGE_SIZE,
        "bands": list(survey.BANDS),
        "depths_years": dict(survey.DEPTHS),
        "pixel_scale_arcsec": survey.PIXEL_SCALE,
        "shard_size": SHARD_SIZE,
    }


def target_classes(config: SimulateConfig) -> np.ndarray:
    """Target class of every galaxy slot, (n_galaxies,) int: the quotas, shuffled with the seed."""
    targets = np.repeat(np.arange(len(CLASSES)), class_quotas(config.n_galaxies))
    np.random.default_rng([config.seed, 1]).shuffle(targets)
    return targets


# -- one galaxy ---------------------------------------------------------------------


@dataclass
class SimulatedGalaxy:
    """One accepted galaxy: its Y10 and Y1 images (3, H, W) float32 and its catalogue row."""

    y10: np.ndarray
    y1: np.ndarray
    row: dict[str, Any]


def _half_light_radius(image: np.ndarray) -> float:
    """Circular half-light radius (pixels) about the light centroid of a noiseless image."""
    img = np.clip(image, 0.0, None)
    total = img.sum()
    ys, xs = np.indices(img.shape)
    xc, yc = (img * xs).sum() / total, (img * ys).sum() / total
    r = np.hypot(xs - xc, ys - yc).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order])
    return float(r[order][np.searchsorted(cum, 0.5 * total)])


def simulate_galaxy(galaxy_id: int, target: int, config: SimulateConfig,
                    timings: dict[str, float] | None = None) -> SimulatedGalaxy:
    """Draw galaxies for slot ``galaxy_id`` until one has the ``target`` G-M20 class, then observe it.

    Args:
        galaxy_id: the slot number; seeds the slot's generator with (seed, 0, galaxy_id).
        target: class index the galaxy must have (0 spiral, 1 elliptical, 2 merger).
        config: the dataset's settings (seed, brightness).
        timings: a dict to which seconds spent rendering, measuring and adding noise are added.

    Returns:
        The accepted galaxy's Y10 and Y1 images (3, 100, 100) float32 electrons and its catalogue row.
        Depends only on (seed, galaxy_id, target, brightness): deterministic.
    """
    rng = np.random.default_rng([config.seed, 0, int(galaxy_id)])
    brightness = config.brightness
    t = timings if timings is not None else {}
    for draw in range(1, MAX_DRAWS + 1):
        t0 = time.perf_counter()
        family = galaxies.FAMILIES[int(rng.choice(len(galaxies.FAMILIES), p=PROPOSALS[target]))]
        galaxy = galaxies.draw_galaxy(family, rng, brightness)
        r_band = galaxy.render("r")
        t1 = time.perf_counter()
        morph = morphology.gini_m20(r_band)
        t2 = time.perf_counter()
        t["render"] = t.get("render", 0.0) + t1 - t0
        t["morphology"] = t.get("morphology", 0.0) + t2 - t1
        t["draws"] = t.get("draws", 0) + 1
        measured = np.isfinite(morph.gini) and np.isfinite(morph.m20) and morph.flag < BAD_MORPHOLOGY_FLAG
        if measured and morph.label == target:
            break
    else:
        raise DeepAdvError(f"galaxy {galaxy_id}: no {CLASSES[target]} galaxy in {MAX_DRAWS} draws; the priors "
                           "cannot fill this class's quota at this --brightness")
    t0 = time.perf_counter()
    scene = np.stack([galaxy.render("g"), r_band, galaxy.render("i")])
    t1 = time.perf_counter()
    seeds = rng.integers(1, 2**31 - 1, size=6)
    y10 = survey.observe(scene, survey.DEPTHS["Y10"], tuple(int(s) for s in seeds[:3]))
    y1 = survey.observe(scene, survey.DEPTHS["Y1"], tuple(int(s) for s in seeds[3:]))
    t2 = time.perf_counter()
    t["render"] = t.get("render", 0.0) + t1 - t0
    t["noise"] = t.get("noise", 0.0) + t2 - t1
    t["accepted"] = t.get("accepted", 0) + 1

    row: dict[str, Any] = {
        "galaxy_id": int(galaxy_id),
        "family": family,
        "label": CLASSES[target],
        "gini": morph.gini,
        "m20": morph.m20,
        "morphology_flag": morph.flag,
        "rpetro_arcsec": morph.rpetro_ellip * survey.PIXEL_SCALE,
        "r_half_arcsec": _half_light_radius(r_band) * survey.PIXEL_SCALE,
    }
    row.update({k: galaxy.params.get(k, float("nan")) for k in
                ("mag_g", "mag_r", "mag_i", *galaxies.PARAM_NAMES)})
    for domain, years in survey.DEPTHS.items():
        for band, snr in zip(survey.BANDS, survey.peak_snr(scene, years)):
            row[f"snr_{band}_{domain}"] = float(snr)
    row["draws"] = draw
    row["seed"] = config.seed
    return SimulatedGalaxy(y10, y1, row)


# -- shards -----------------------------------------------------------------------------


def _shard_path(work: Path, index: int) -> Path:
    return work / f"shard_{index:05d}.npz"


def _run_shard(task: tuple[Path, int, list[int], list[int], SimulateConfig]) -> tuple[int, int, dict[str, float]]:
    """Simulate one shard of galaxy slots and write it atomically; return (index, size, timings)."""
    work, index, ids, targets, config = task
    timings: dict[str, float] = {}
    results = [simulate_galaxy(i, t, config, timings) for i, t in zip(ids, targets)]
    write_npz(_shard_path(work, index),
              y10=np.stack([r.y10 for r in results]),
              y1=np.stack([r.y1 for r in results]),
              rows=np.array(json.dumps([r.row for r in results])))
    return index, len(ids), timings


def _load_shard(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    with np.load(path, allow_pickle=False) as z:
        return z["y10"], z["y1"], json.loads(str(z["rows"]))


# -- splits and augmentation ------------------------------------------------------


def augment(image: np.ndarray, augmentation: str) -> np.ndarray:
    """Apply one merger augmentation to a (bands, H, W) image."""
    if augmentation == "none":
        return image
    if augmentation == "hflip":
        return image[:, :, ::-1]
    if augmentation == "vflip":
        return image[:, ::-1, :]
    if augmentation == "rot90":
        return np.rot90(image, 1, axes=(1, 2))
    if augmentation == "rot180":
        return np.rot90(image, 2, axes=(1, 2))
    raise OptionError(f"unknown augmentation {augmentation!r}; choose one of {choice_list(AUGMENTATIONS)}")


def plan_splits(targets: np.ndarray, seed: int, split_mode: str) -> dict[str, list[tuple[int, str]]]:
    """(galaxy id, augmentation) of every image of every split, in storage order.

    ``galaxy`` mode: each class's galaxies are split 70:10:20 (all copies of one galaxy in
    one split), then the mergers are augmented. ``paper`` mode: all mergers are augmented
    first and the images are split 70:10:20 at random (copies of one merger leak across
    splits, as in the paper). Both are seeded; images are shuffled within each split.
    """
    rng = np.random.default_rng([seed, 2])
    merger = CLASSES.index("merger")

    def images_of(ids: list[int]) -> list[tuple[int, str]]:
        out = []
        for gid in ids:
            augs = AUGMENTATIONS if targets[gid] == merger else AUGMENTATIONS[:1]
            out += [(int(gid), a) for a in augs]
        return out

    plan: dict[str, list[tuple[int, str]]] = {s: [] for s in SPLITS}
    if split_mode == "galaxy":
        for c in range(len(CLASSES)):
            ids = np.flatnonzero(targets == c)
            rng.shuffle(ids)
            sizes = split_sizes(len(ids))
            start = 0
            for split in SPLITS:
                plan[split] += images_of(sorted(ids[start:start + sizes[split]].tolist()))
                start += sizes[split]
    elif split_mode == "paper":
        everything = images_of(list(range(len(targets))))
        order = rng.permutation(len(everything))
        n_train = int(round(SPLIT_FRACTIONS["train"] * len(everything)))
        n_valid = int(round(SPLIT_FRACTIONS["valid"] * len(everything)))
        bounds = {"train": (0, n_train), "valid": (n_train, n_train + n_valid),
                  "test": (n_train + n_valid, len(everything))}
        for split, (a, b) in bounds.items():
            plan[split] = [everything[i] for i in sorted(order[a:b].tolist())]
    else:
        check_choice(split_mode, SPLIT_MODES, "split mode")
    for split in SPLITS:
        perm = rng.permutation(len(plan[split]))
        plan[split] = [plan[split][i] for i in perm]
    return plan


# -- the output folder ----------------------------------------------------------------


def _clear(out: Path) -> None:
    """Remove the dataset files and the work folder (never anything else)."""
    clear_dataset_files(out)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)


def _prepare_folder(out: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """Decide between a fresh start and resumption; return True when resuming."""
    work = out / WORK_DIR
    if (out / "dataset.json").exists():
        if not overwrite:
            shutil.rmtree(work, ignore_errors=True)  # left by a run killed after writing dataset.json
            raise file_error(out, "already holds a finished dataset; use --overwrite to replace it")
        _clear(out)
    if (work / "config.json").exists():
        try:
            previous = read_json(work / "config.json")
        except DeepAdvError:
            previous = None
        if previous == json.loads(json.dumps(record)):
            return True
        if not overwrite:
            raise file_error(out, "holds an unfinished dataset with a different configuration; run the same "
                                  "command as before to resume it, or use --overwrite to start again")
        _clear(out)
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if others and not overwrite:
        raise file_error(out, f"output folder is not empty ({', '.join(others[:3])}"
                           f"{', ...' if len(others) > 3 else ''}); choose an empty folder or use --overwrite")
    if overwrite:
        _clear(out)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "config.json", record)
    return False


def _iter_results(tasks: list[tuple], workers: int) -> Iterator[tuple[int, int, dict[str, float]]]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _run_shard(task)
        return
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_run_shard, tasks)


def _summary(values: np.ndarray) -> dict[str, float]:
    p = np.percentile(values, [5, 16, 50, 84, 95])
    return {"median": float(p[2]), "p5": float(p[0]), "p16": float(p[1]), "p84": float(p[3]), "p95": float(p[4]),
            "min": float(values.min()), "max": float(values.max())}


def _assemble(out: Path, config: SimulateConfig, record: dict[str, Any], targets: np.ndarray,
              n_shards: int) -> dict[str, Any]:
    """Write the split arrays, labels and catalogues from the shards; return the metadata."""
    plan = plan_splits(targets, config.seed, config.split_mode)
    where: dict[int, list[tuple[str, int, str]]] = {}
    for split, items in plan.items():
        for row, (gid, aug) in enumerate(items):
            where.setdefault(gid, []).append((split, row, aug))

    rows, galaxy_rows = _write_images(out, plan, where, n_shards)
    stretch = _stretch_constants(out, config, len(plan["train"]))
    counts: dict[str, Any] = {"galaxies": dict(zip(CLASSES, (int((targets == c).sum()) for c in range(len(CLASSES)))))}
    for split in SPLITS:
        labels = np.array([CLASSES.index(r["label"]) for r in rows[split]], dtype=np.int64)
        write_npy(out / label_file(split), np.eye(len(CLASSES), dtype=np.float32)[labels])
        write_csv(out / catalog_file(split), rows[split], CATALOG_FIELDS)
        counts[split] = {**{c: int((labels == i).sum()) for i, c in enumerate(CLASSES)}, "total": len(labels)}
        counts[split]["galaxies"] = len({r["galaxy_id"] for r in rows[split]})
    galaxy_rows.sort(key=lambda r: r["galaxy_id"])
    return {
        "kind": "deepadv-dataset",
        "version": SIMULATOR_VERSION,
        "package_version": __version__,
        "seed": config.seed,
        "config": record,
        "classes": list(CLASSES),
        "bands": list(survey.BANDS),
        "stretch": stretch,
        "stretch_images": min(len(plan["train"]), STRETCH_SAMPLE),
        "counts": counts,
        **_galaxy_statistics(galaxy_rows),
        "sky_per_pixel": {d: {b: survey.sky_level(b, y) for b in survey.BANDS} for d, y in survey.DEPTHS.items()},
    }


def _write_images(out: Path, plan: dict[str, list[tuple[int, str]]], where: dict[int, list[tuple[str, int, str]]],
                  n_shards: int) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Fill the split arrays (memory-mapped, atomically renamed) from the shards, augmenting mergers;
    return the catalogue rows per split and one row per galaxy."""
    work, size = out / WORK_DIR, survey.IMAGE_SIZE
    rows: dict[str, list[dict[str, Any] | None]] = {s: [None] * len(plan[s]) for s in SPLITS}
    galaxy_rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        arrays = {}
        for domain in survey.DEPTHS:
            for split in SPLITS:
                tmp = stack.enter_context(atomic_path(out / image_file(domain, split)))
                arrays[domain, split] = np.lib.format.open_memmap(
                    tmp, mode="w+", dtype=np.float32, shape=(len(plan[split]), len(survey.BANDS), size, size))
                reserve_blocks(tmp)
        for index in range(n_shards):
            y10, y1, shard_rows = _load_shard(_shard_path(work, index))
            for k, row in enumerate(shard_rows):
                galaxy_rows.append(row)
                for split, position, aug in where[row["galaxy_id"]]:
                    arrays["Y10", split][position] = augment(y10[k], aug)
                    arrays["Y1", split][position] = augment(y1[k], aug)
                    rows[split][position] = {**row, "augmentation": aug}
        for key in list(arrays):
            arrays.pop(key).flush()  # drop each memmap before its file is renamed
    return rows, galaxy_rows  # type: ignore[return-value]


def _stretch_constants(out: Path, config: SimulateConfig, n_train: int) -> dict[str, list[float]]:
    """Each domain's (p0.1, p99.9) on (a seeded sample of at most STRETCH_SAMPLE) training images."""
    rng = np.random.default_rng([config.seed, 3])
    sample = np.arange(n_train) if n_train <= STRETCH_SAMPLE else np.sort(
        rng.choice(n_train, STRETCH_SAMPLE, replace=False))
    stretch = {}
    for domain in survey.DEPTHS:
        train = np.load(out / image_file(domain, "train"), mmap_mode="r")
        stretch[domain] = list(stretch_constants(train[sample]))
    return stretch


def _galaxy_statistics(galaxy_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Families per class, acceptance of the quota sampling and the peak S/N distribution."""
    draws = np.array([r["draws"] for r in galaxy_rows])
    snr = {domain: {band: _summary(np.array([r[f"snr_{band}_{domain}"] for r in galaxy_rows]))
                    for band in survey.BANDS} for domain in survey.DEPTHS}
    families = {c: {f: sum(1 for r in galaxy_rows if r["label"] == c and r["family"] == f)
                    for f in galaxies.FAMILIES} for c in CLASSES}
    acceptance = {"draws": int(draws.sum()), "accepted": len(galaxy_rows),
                  "rate": len(galaxy_rows) / float(draws.sum()),
                  "by_class": {c: float(sum(1 for r in galaxy_rows if r["label"] == c)
                                        / max(1, sum(r["draws"] for r in galaxy_rows if r["label"] == c)))
                               for c in CLASSES}}
    return {"families_by_class": families, "acceptance": acceptance, "peak_snr": snr}


def simulate_dataset(out: str | Path, config: SimulateConfig | None = None, *, workers: int = 1,
                     overwrite: bool = False) -> Path:
    """Simulate the Y10/Y1 mock dataset into the folder ``out``.

    Args:
        out: the dataset folder to write (created; SPEC 3.6 layout, ``dataset.json`` last).
        config: what to simulate [default: ``SimulateConfig.from_preset("quick")``].
        workers: processes sharing the work; the arrays do not depend on their number [default: 1].
        overwrite: replace a finished or different dataset in ``out`` [default: False].

    Returns:
        ``out``. An unfinished run of the same configuration in ``out`` is resumed; a finished
        or foreign non-empty folder is refused (:class:`FileError`) unless ``overwrite``.
    """
    out = Path(out)
    config = config if config is not None else SimulateConfig.from_preset("quick")
    record = dataset_config(config)
    if isinstance(workers, bool) or int(workers) < 1:
        raise OptionError(f"--workers must be at least 1, got {workers}")
    check_output_folder(out)
    start = time.perf_counter()
    with OutputLock(out, "simulate"):
        remove_temporaries(out)
        resumed = _prepare_folder(out, record, overwrite)
        work = out / WORK_DIR
        targets = target_classes(config)
        n = config.n_galaxies
        shards = [list(range(a, min(n, a + SHARD_SIZE))) for a in range(0, n, SHARD_SIZE)]
        done = {i for i in range(len(shards)) if _shard_path(work, i).exists()}
        tasks = [(work, i, ids, [int(targets[g]) for g in ids], config)
                 for i, ids in enumerate(shards) if i not in done]
        if resumed:
            info(f"resuming {out}: {sum(len(shards[i]) for i in done)} of {n} galaxies already simulated")
        timings = _simulate_shards(tasks, int(workers), total=n, done=sum(len(shards[i]) for i in done))
        metadata = _assemble(out, config, record, targets, len(shards))
        metadata["seconds"] = round(time.perf_counter() - start, 1)
        metadata["resumed"] = resumed
        metadata["timings_s"] = {k: round(v, 2) for k, v in timings.items() if k not in ("draws", "accepted")}
        write_json(out / "dataset.json", metadata)
        shutil.rmtree(work, ignore_errors=True)
    return out


def _simulate_shards(tasks: list[tuple], workers: int, *, total: int, done: int) -> dict[str, float]:
    """Run the shard tasks with a progress bar; return the summed per-step timings."""
    timings: dict[str, float] = {}
    with make_progress() as progress:
        bar = progress.add_task("simulating galaxies", total=total, completed=done)
        for _, count, t in _iter_results(tasks, workers):
            for k, v in t.items():
                timings[k] = timings.get(k, 0.0) + v
            progress.advance(bar, count)
    return timings
