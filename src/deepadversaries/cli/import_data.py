"""`deepadv import`: bring your own data (FITS cutouts + catalogue, HDF5, an npy folder, or a registered format).

The command's options are the union of what the built-in formats read; the importer registry
(:mod:`deepadversaries.data.importers.registry`) says which format reads which, gives the ``--format``
choices and help, and routes to the format's builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from deepadversaries import SPLITS
from deepadversaries.data.importers.base import ImportOptions, split_names
from deepadversaries.data.importers.registry import foreign_options, formats_help, get_format, guess_format
from deepadversaries.data.stretches import describe
from deepadversaries.errors import OptionError
from deepadversaries.io import read_json

HELP = """Convert your own galaxy cutouts into a dataset folder, checked once.

The labelled training (source) domain goes to the Y10 slot, an optional
second (shifted, e.g. shallower) domain to the Y1 slot; dataset.json records
your names for them, the classes, bands, normalisation, split, every option
and the SHA-256 of every input file. Pixels are stored as read (float32); the
normalisation is applied when the data are loaded. Any image size, band count
and number of classes (at least 2).

\b
FITS cutouts listed in a catalogue (FITS binary table or CSV):
  deepadv import --out mydata --catalog cat.csv --path-column file \\
      --label-column morph --classes spiral,elliptical,merger
  deepadv import --out mydata --catalog cat.fits --path-column deep \\
      --target-path-column wide --label-column class --bands g,r,i \\
      --domain-names deep,wide --split-column split --stretch asinh:8
\b
HDF5, named datasets (one entry per image, same order):
  deepadv import --out mydata --input galaxies.h5 --images-key x \\
      --labels-key y --band-axis -1 --stretch zscore
HDF5 as Galaxy10 DECaLS (images uint8 (N, 256, 256, 3), labels "ans"):
  deepadv import --out galaxy10 --input Galaxy10_DECals.h5 --bands g,r,z
HDF5, one group per domain and split (/deep/train/images, ...):
  deepadv import --out mydata --input survey.h5 --groups deep,wide
\b
A folder already in the dataset layout (validated, normalisation redone):
  deepadv import --out mydata --input published_folder --format npy

Without a split column the galaxies are split 70:10:20 per class with --seed
(all copies of one galaxy id in one split). Bad input stops with one line
naming the file and row (exit status 2) and leaves no dataset behind.
"""



_OUT = typer.Option(..., "--out", help="Dataset folder to write (new or empty; see --overwrite).")
_FORMAT = typer.Option(None, "--format", help=formats_help())
_CATALOG = typer.Option(None, "--catalog", help="fits: the catalogue, a FITS binary table or a CSV file with a "
                                                "header; one row per image.")
_INPUT = typer.Option(None, "--input", help="hdf5: the HDF5 file; npy: the folder of "
                                            "images_Y10_{train,valid,test}.npy, labels_*.npy (and optional "
                                            "images_Y1_*, catalog_*.csv).")
_PATH_COLUMN = typer.Option(None, "--path-column", help="fits: column of cutout paths, relative to the "
                                                        "catalogue's folder (or absolute); one file per galaxy, "
                                                        "e.g. --path-column file.")
_LABEL_COLUMN = typer.Option(None, "--label-column", help="fits: column of labels, class names or integer indices "
                                                          "into --classes, e.g. --label-column morph.")
_ID_COLUMN = typer.Option(None, "--id-column", help="fits: column of galaxy ids (unique unless "
                                                    "--augmentation-column) (default: the row number).")
_SPLIT_COLUMN = typer.Option(None, "--split-column", help="fits: column of train/valid/test (also val, "
                                                          "validation) (default: seeded stratified 70:10:20 "
                                                          "split).")
_AUGMENTATION_COLUMN = typer.Option(None, "--augmentation-column", help="fits: column naming augmented copies "
                                                                        "(e.g. none, hflip) of one galaxy id; "
                                                                        "copies stay in one split.")
_TARGET_PATH_COLUMN = typer.Option(None, "--target-path-column", help="fits: column of the second (shifted) "
                                                                      "domain's cutouts of the same galaxies, "
                                                                      "e.g. a shallower survey's; same shape.")
_HDUS = typer.Option(None, "--hdus", help="fits: one 2-D HDU per band, by number (0 is the primary), e.g. --hdus "
                                          "1,2,3 (default: a cube in the primary or first image HDU, or the "
                                          "EXTNAMEs of --bands).")
_BAND_AXIS = typer.Option(None, "--band-axis", help="fits cube / hdf5 images: numpy axis of the bands within one "
                                                    "image: 0 for (bands, H, W), -1 for (H, W, bands) (default: "
                                                    "0; hdf5: -1 when the last axis has at most 4 entries and the "
                                                    "image side more, e.g. (N, 256, 256, 3)).")
_IMAGES_KEY = typer.Option(None, "--images-key", help="hdf5: dataset of images (N, bands, H, W), (N, H, W, bands) "
                                                      "with --band-axis -1, or (N, H, W) (default: images).")
_LABELS_KEY = typer.Option(None, "--labels-key", help="hdf5: dataset of labels (N,): integers or (byte) strings; "
                                                      "or one-hot (N, K) (default: labels, or ans as Galaxy10 "
                                                      "names it).")
_SPLIT_KEY = typer.Option(None, "--split-key", help="hdf5: dataset (N,) of train/valid/test (default: seeded "
                                                    "stratified split).")
_IDS_KEY = typer.Option(None, "--ids-key", help="hdf5: dataset (N,) of galaxy ids (default: the index).")
_TARGET_IMAGES_KEY = typer.Option(None, "--target-images-key", help="hdf5: the second (shifted) domain's images, "
                                                                    "same shape and order.")
_AUGMENTATION_KEY = typer.Option(None, "--augmentation-key", help="hdf5: dataset (N,) naming augmented copies of "
                                                                  "one id.")
_GROUPS = typer.Option(None, "--groups", help="hdf5, the groups layout: the source and optional target group, "
                                              "e.g. --groups deep,wide reads /deep/{train,valid,test}/images and "
                                              ".../labels (the keys as --images-key/--labels-key); the groups "
                                              "give the split and the domain names.")
_CLASSES = typer.Option(None, "--classes", help="Class names in label order, e.g. spiral,elliptical,merger; "
                                                "integer labels index them (default: the sorted distinct labels).")
_BANDS = typer.Option(None, "--bands", help="Band names, e.g. g,r,i. fits: the EXTNAMEs of one HDU per band when "
                                            "the cutouts have them, else names of the cube's planes (default: "
                                            "band0, band1, ...).")
_DOMAIN_NAMES = typer.Option(None, "--domain-names", help="Your names of the source and target domains, e.g. "
                                                          "deep,wide (default: source,target).")
_STRETCH = typer.Option("paper", "--stretch", help="Normalisation, fitted on each domain's training split: paper "
                                                   "(clip to the 0.1/99.9 percentiles, arcsinh; the paper's), "
                                                   "asinh:Q (Lupton: asinh(Q x / s_b) / Q, s_b the band's 99.9 "
                                                   "percentile), zscore (per band) or none (already normalised).")
_SEED = typer.Option(0, "--seed", help="Seed of the stratified split and of the normalisation's subsample.")
_CHUNK = typer.Option(256, "--chunk", help="Images read and written at a time (bounds memory).")
_FIT_SAMPLE = typer.Option(2000, "--fit-sample", help="Most training images used to fit the percentile "
                                                      "normalisations (paper, asinh).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace the dataset in a non-empty --out (only its dataset "
                                                     "files; the old dataset stays if the import fails).")


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``import`` command (no figures)."""

    @app.command("import", help=HELP)
    def import_(
        out: Path = _OUT,
        fmt: Optional[str] = _FORMAT,
        catalog: Optional[Path] = _CATALOG,
        input: Optional[Path] = _INPUT,
        path_column: Optional[str] = _PATH_COLUMN,
        label_column: Optional[str] = _LABEL_COLUMN,
        id_column: Optional[str] = _ID_COLUMN,
        split_column: Optional[str] = _SPLIT_COLUMN,
        augmentation_column: Optional[str] = _AUGMENTATION_COLUMN,
        target_path_column: Optional[str] = _TARGET_PATH_COLUMN,
        hdus: Optional[str] = _HDUS,
        band_axis: Optional[int] = _BAND_AXIS,
        images_key: Optional[str] = _IMAGES_KEY,
        labels_key: Optional[str] = _LABELS_KEY,
        split_key: Optional[str] = _SPLIT_KEY,
        ids_key: Optional[str] = _IDS_KEY,
        target_images_key: Optional[str] = _TARGET_IMAGES_KEY,
        augmentation_key: Optional[str] = _AUGMENTATION_KEY,
        groups: Optional[str] = _GROUPS,
        classes: Optional[str] = _CLASSES,
        bands: Optional[str] = _BANDS,
        domain_names: Optional[str] = _DOMAIN_NAMES,
        stretch: str = _STRETCH,
        seed: int = _SEED,
        chunk: int = _CHUNK,
        fit_sample: int = _FIT_SAMPLE,
        overwrite: bool = _OVERWRITE,
    ) -> None:
        """Import the user's data into the dataset folder ``out`` and summarise it."""
        given = {"--catalog": catalog, "--input": input, "--path-column": path_column, "--label-column": label_column,
                 "--id-column": id_column, "--split-column": split_column,
                 "--augmentation-column": augmentation_column, "--target-path-column": target_path_column,
                 "--hdus": hdus, "--band-axis": band_axis, "--images-key": images_key, "--labels-key": labels_key,
                 "--split-key": split_key, "--ids-key": ids_key, "--target-images-key": target_images_key,
                 "--augmentation-key": augmentation_key, "--groups": groups}
        form = _resolve_format(fmt, given)
        options = ImportOptions(stretch=stretch, seed=seed, chunk=chunk, fit_sample=fit_sample,
                                classes=split_names(classes), bands=split_names(bands),
                                domain_names=split_names(domain_names), overwrite=overwrite)
        _report(_import(out, form, given, options))


def _resolve_format(fmt: str | None, given: dict[str, Any]) -> str:
    """The checked ``--format``, or the one the given inputs imply (the importer registry decides)."""
    return get_format(fmt.strip().lower()).name if fmt else guess_format(given)


def _import(out: Path, form: str, given: dict[str, Any], options: ImportOptions) -> Path:
    """Refuse (OptionError) an option the format does not read, then import with the format's builder."""
    foreign = foreign_options(get_format(form), given)
    if foreign:
        raise OptionError(f"{foreign[0]} does not apply to --format {form}")
    from deepadversaries.data.importing import import_data  # deferred for start-up time (torch, astropy, h5py)

    return import_data(out, form, given, options)


def _report(path: Path) -> None:
    """Summarise the imported dataset from its ``dataset.json``."""
    meta = read_json(path / "dataset.json")
    names = meta["domain_names"]
    typer.echo(f"dataset: {path}  ({meta['source']['format']}, {len(meta['source']['files'])} files checksummed)")
    typer.echo(f"images: {' x '.join(str(v) for v in meta['image_shape'])} (bands {', '.join(meta['bands'])}); "
               f"classes: {', '.join(meta['classes'])}")
    typer.echo("domains: " + ", ".join(f"{slot} = {names[slot]}" for slot in meta["domains"]))
    for split in SPLITS:
        c = meta["counts"][split]
        typer.echo(f"{split:>5}: {c['total']:6d} images, {c['galaxies']} galaxies (" +
                   ", ".join(f"{k} {c[k]}" for k in meta["classes"]) + ")")
    typer.echo(f"split: {meta['split']['mode']}" +
               (f" (seed {meta['split']['seed']})" if meta["split"]["mode"] == "stratified" else ""))
    norm = meta["normalisation"]
    for slot, params in norm["params"].items():
        typer.echo(f"normalisation {names[slot]}: {describe(norm['kind'], params)}")
    if len(meta["domains"]) == 1:
        typer.echo("one domain only: training, evaluation and attacks run on it; stages that compare two "
                   "domains (domain adaptation, the shifted-domain test, latent distances) will say so.")
