"""`deepadv import`: bring your own data (FITS cutouts + catalogue, HDF5, or an npy folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

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
  deepadv import --out mydata --input galaxies.h5 --images-key images \\
      --labels-key ans --band-axis -1 --stretch zscore
HDF5, one group per domain and split (/deep/train/images, ...):
  deepadv import --out mydata --input survey.h5 --groups deep,wide
\b
A folder already in the dataset layout (validated, normalisation redone):
  deepadv import --out mydata --input published_folder --format npy

Without a split column the galaxies are split 70:10:20 per class with --seed
(all copies of one galaxy id in one split). Bad input stops with one line
naming the file and row (exit status 2) and leaves no dataset behind.
"""


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``import`` command (no figures)."""

    @app.command("import", help=HELP)
    def import_(
        out: Path = typer.Option(..., "--out", help="Dataset folder to write (new or empty; see --overwrite)."),
        fmt: Optional[str] = typer.Option(None, "--format", help="fits, hdf5 or npy (default: fits with "
                                          "--catalog, npy when --input is a folder, else hdf5)."),
        catalog: Optional[Path] = typer.Option(None, "--catalog", help="fits: the catalogue, a FITS binary table "
                                               "or a CSV file with a header; one row per image."),
        input: Optional[Path] = typer.Option(None, "--input", help="hdf5: the HDF5 file; npy: the folder of "
                                             "images_Y10_{train,valid,test}.npy, labels_*.npy (and optional "
                                             "images_Y1_*, catalog_*.csv)."),
        path_column: Optional[str] = typer.Option(None, "--path-column", help="fits: column of cutout paths, "
                                                  "relative to the catalogue's folder (or absolute); one file "
                                                  "per galaxy, e.g. --path-column file."),
        label_column: Optional[str] = typer.Option(None, "--label-column", help="fits: column of labels, class "
                                                   "names or integer indices into --classes, e.g. --label-column "
                                                   "morph."),
        id_column: Optional[str] = typer.Option(None, "--id-column", help="fits: column of galaxy ids (unique "
                                                "unless --augmentation-column) (default: the row number)."),
        split_column: Optional[str] = typer.Option(None, "--split-column", help="fits: column of train/valid/test "
                                                   "(also val, validation) (default: seeded stratified "
                                                   "70:10:20 split)."),
        augmentation_column: Optional[str] = typer.Option(None, "--augmentation-column", help="fits: column "
                                                          "naming augmented copies (e.g. none, hflip) of one "
                                                          "galaxy id; copies stay in one split."),
        target_path_column: Optional[str] = typer.Option(None, "--target-path-column", help="fits: column of the "
                                                         "second (shifted) domain's cutouts of the same galaxies, "
                                                         "e.g. a shallower survey's; same shape."),
        hdus: Optional[str] = typer.Option(None, "--hdus", help="fits: one 2-D HDU per band, by number (0 is the "
                                           "primary), e.g. --hdus 1,2,3 (default: a cube in the primary or first "
                                           "image HDU, or the EXTNAMEs of --bands)."),
        band_axis: int = typer.Option(0, "--band-axis", help="fits cube / hdf5 images: numpy axis of the bands "
                                      "within one image: 0 for (bands, H, W), -1 for (H, W, bands)."),
        images_key: Optional[str] = typer.Option(None, "--images-key", help="hdf5: dataset of images (N, bands, "
                                                 "H, W), (N, H, W, bands) with --band-axis -1, or (N, H, W) "
                                                 "(default: images)."),
        labels_key: Optional[str] = typer.Option(None, "--labels-key", help="hdf5: dataset of labels (N,): "
                                                 "integers or (byte) strings; or one-hot (N, K) (default: labels)."),
        split_key: Optional[str] = typer.Option(None, "--split-key", help="hdf5: dataset (N,) of train/valid/test "
                                                "(default: seeded stratified split)."),
        ids_key: Optional[str] = typer.Option(None, "--ids-key", help="hdf5: dataset (N,) of galaxy ids "
                                              "(default: the index)."),
        target_images_key: Optional[str] = typer.Option(None, "--target-images-key", help="hdf5: the second "
                                                        "(shifted) domain's images, same shape and order."),
        augmentation_key: Optional[str] = typer.Option(None, "--augmentation-key", help="hdf5: dataset (N,) "
                                                       "naming augmented copies of one id."),
        groups: Optional[str] = typer.Option(None, "--groups", help="hdf5, the groups layout: the source and "
                                             "optional target group, e.g. --groups deep,wide reads "
                                             "/deep/{train,valid,test}/images and .../labels (the keys as "
                                             "--images-key/--labels-key); the groups give the split and the "
                                             "domain names."),
        classes: Optional[str] = typer.Option(None, "--classes", help="Class names in label order, e.g. "
                                              "spiral,elliptical,merger; integer labels index them (default: "
                                              "the sorted distinct labels)."),
        bands: Optional[str] = typer.Option(None, "--bands", help="Band names, e.g. g,r,i. fits: the EXTNAMEs of "
                                            "one HDU per band when the cutouts have them, else names of the "
                                            "cube's planes (default: band0, band1, ...)."),
        domain_names: Optional[str] = typer.Option(None, "--domain-names", help="Your names of the source and "
                                                   "target domains, e.g. deep,wide (default: source,target)."),
        stretch: str = typer.Option("paper", "--stretch", help="Normalisation, fitted on each domain's training "
                                    "split: paper (clip to the 0.1/99.9 percentiles, arcsinh; the paper's), "
                                    "asinh:Q (Lupton: asinh(Q x / s_b) / Q, s_b the band's 99.9 percentile), "
                                    "zscore (per band) or none (already normalised)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the stratified split and of the normalisation's "
                                 "subsample."),
        chunk: int = typer.Option(256, "--chunk", help="Images read and written at a time (bounds memory)."),
        fit_sample: int = typer.Option(2000, "--fit-sample", help="Most training images used to fit the "
                                       "percentile normalisations (paper, asinh)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the dataset in a non-empty --out "
                                       "(only its dataset files; the old dataset stays if the import fails)."),
    ) -> None:
        from .. import SPLITS
        from ..errors import OptionError
        from ..importing import (
            ImportOptions,
            check_format,
            guess_format,
            import_fits,
            import_hdf5,
            import_npy,
            split_names,
        )
        from ..io import read_json

        form = check_format(fmt.strip().lower()) if fmt else guess_format(catalog, input)
        options = ImportOptions(stretch=stretch, seed=seed, chunk=chunk, fit_sample=fit_sample,
                                classes=split_names(classes), bands=split_names(bands),
                                domain_names=split_names(domain_names), overwrite=overwrite)
        fits_only = {"--path-column": path_column, "--label-column": label_column, "--id-column": id_column,
                     "--split-column": split_column, "--augmentation-column": augmentation_column,
                     "--target-path-column": target_path_column, "--hdus": hdus, "--catalog": catalog}
        hdf5_only = {"--images-key": images_key, "--labels-key": labels_key, "--split-key": split_key,
                     "--ids-key": ids_key, "--target-images-key": target_images_key,
                     "--augmentation-key": augmentation_key, "--groups": groups}
        for name, value in (list(hdf5_only.items()) + [("--input", input)] if form == "fits" else
                            list(fits_only.items()) + (list(hdf5_only.items()) if form == "npy" else [])):
            if value is not None:
                raise OptionError(f"{name} does not apply to --format {form}")
        if form == "fits":
            missing = [n for n, v in (("--catalog", catalog), ("--path-column", path_column),
                                      ("--label-column", label_column)) if v is None]
            if missing:
                raise OptionError(f"--format fits needs {', '.join(missing)} (e.g. --catalog cat.csv "
                                  "--path-column file --label-column class)")
            try:
                hdu_list = [int(h) for h in split_names(hdus)] if hdus is not None else None
            except ValueError:
                raise OptionError(f"--hdus takes comma-separated HDU numbers, e.g. 1,2,3; got {hdus!r}") from None
            path = import_fits(out, catalog, path_column=path_column, label_column=label_column,
                               id_column=id_column, split_column=split_column,
                               augmentation_column=augmentation_column, target_path_column=target_path_column,
                               hdus=hdu_list, band_axis=band_axis, options=options)
        else:
            if input is None:
                raise OptionError(f"--format {form} needs --input ({'an HDF5 file' if form == 'hdf5' else 'a folder'})")
            if form == "hdf5":
                path = import_hdf5(out, input, images_key=images_key or "images", labels_key=labels_key or "labels",
                                   split_key=split_key,
                                   ids_key=ids_key, target_images_key=target_images_key,
                                   augmentation_key=augmentation_key, groups=split_names(groups),
                                   band_axis=band_axis, options=options)
            else:
                path = import_npy(out, input, options=options)
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
        from ..stretches import describe

        norm = meta["normalisation"]
        for slot, params in norm["params"].items():
            typer.echo(f"normalisation {names[slot]}: {describe(norm['kind'], params)}")
        if len(meta["domains"]) == 1:
            typer.echo("one domain only: training, evaluation and attacks run on it; stages that compare two "
                       "domains (domain adaptation, the shifted-domain test, latent distances) will say so.")
