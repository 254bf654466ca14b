"""`deepadv train`: train ConvNet, the D4-equivariant ConvNet, ResNet18 or a timm backbone, regular, with
domain adaptation or with one-pixel adversarial training;
or adopt a TorchScript model trained elsewhere (``--model-file``).

The method options are generated from the registry (:mod:`deepadversaries.methods`): every setting
of every registered method that fits on a command line is an option ``--{method}-{setting}``
(``--mmd-weight``, ``--coral-weight``, ``--dann-gamma``), and ``--method``'s help lists the
methods with their summaries. The command is a :class:`TrainCommand` whose signature Typer reads
each time the command line is built, so a method added with
:func:`~deepadversaries.methods.register_method` has its options at once.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer

from deepadversaries.config import AUGMENTATIONS, TrainConfig
from deepadversaries.errors import OptionError
from deepadversaries.methods import METHOD_SPECS


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Add the ``train`` command."""
    app.command("train")(TrainCommand())


def method_options() -> dict[str, tuple[str, str, Any]]:
    """The generated method options: ``{parameter: (flag, method, setting)}`` for every registered method's
    settings that fit on a command line, in registration order."""
    return {spec.key(s.name): ("--" + spec.key(s.name).replace("_", "-"), spec.name, s)
            for spec in METHOD_SPECS.values() for s in spec.settings if s.on_command_line}


def _method_help() -> str:
    methods = "; ".join(f"{spec.name}: {spec.summary} ({spec.reference})" if spec.reference else
                        f"{spec.name}: {spec.summary}" for spec in METHOD_SPECS.values())
    return (f"Training method. {methods}. Domain adaptation needs a dataset with two domains; each method's "
            "settings are the options --METHOD-SETTING below. With --model-file: how the model was trained "
            "elsewhere (a label that analyze uses; not adabn).")


class TrainCommand:
    """Train a classifier on the Y10 training set (labels) and, with domain adaptation, the unlabelled Y1 set.

    Keeps the checkpoint with the best Y10 validation accuracy (checkpoints/best.pt) and stops early when the validation loss stops improving. Running the same command again continues an interrupted run. With --model-file a TorchScript model trained elsewhere is adopted into the run folder instead (no training; --method then records how it was trained).
    """

    @property
    def __signature__(self) -> inspect.Signature:
        base = inspect.signature(_train, eval_str=True)
        params = [p.replace(default=typer.Option(p.default.default, *p.default.param_decls, help=_method_help()))
                  if p.name == "method" else p for p in base.parameters.values() if p.name != "method_settings"]
        taken = {p.name for p in params}
        for key, (flag, method, setting) in method_options().items():
            if key in taken:
                raise OptionError(f"method {method!r}: option {flag} is taken by another option of deepadv train")
            default = typer.Option(None, flag, help=f"{setting.help} [--method {method}; default: "
                                                    f"{setting.default}]")
            params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=Optional[setting.kind]))
        return inspect.Signature(params)

    @property
    def __annotations__(self) -> dict[str, Any]:
        return {p.name: p.annotation for p in self.__signature__.parameters.values()}

    def __call__(self, **options: Any) -> None:
        generated = method_options()
        settings = {key: options.pop(key) for key in list(options) if key in generated}
        _train(**options, method_settings=settings)


def _train(
    data: Path = typer.Option(..., "--data", help="Dataset folder (from 'deepadv simulate', 'deepadv import' or the published .npy files); the model adapts to its image size, band count and classes."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (config.json, checkpoints/, log.csv, training.json)."),
    model: str = typer.Option("convnet", "--model", help="Architecture: convnet (paper Table 1), d4-convnet (the ConvNet with convolutions equivariant to the eight rotations and flips and a latent invariant to them, square images; docs/defences.md), resnet18, or timm:NAME, any timm backbone (random initialisation, nothing downloaded) with the package's 256-d bottleneck and head, e.g. timm:resnet10t; list names with python -c \"import timm; print(timm.list_models('*resnet*'))\"."),
    model_file: Optional[Path] = typer.Option(None, "--model-file", help="Adopt a TorchScript model trained elsewhere (torch.jit.script(model).save('model.pt'); never a pickle) instead of training: writes the run folder (checkpoints/model.ts, config.json, training.json) that evaluate, attack, robustness and analyze then use. With embed() and head() methods every analysis works; otherwise give --latent-layer."),
    latent_layer: Optional[str] = typer.Option(None, "--latent-layer", help="With --model-file, for a model without embed()/head(): the submodule whose output is the latent (dotted for nested ones, e.g. layer4 or backbone.fc); analyses that need head(z) (church windows) are then skipped."),
    method: str = typer.Option("regular", "--method",
                               help="regular (Y10 labels only); domain adaptation towards the unlabelled Y1 images: mmd (the paper: + lambda*MMD^2 of the Y10 and Y1 latents), dann (a domain classifier behind a gradient-reversal layer, Ganin et al. 2016), coral (Deep CORAL: the latent covariances aligned, Sun & Saenko 2016), adabn (regular training, then batch-norm statistics re-estimated on Y1 for Y1 inference, Li et al. 2016); adv-1p (one-pixel adversarial training: a share of each batch, --adv-share, replaced by its most damaging one-pixel corner change; docs/defences.md). Domain adaptation needs a dataset with two domains. With --model-file: how the model was trained elsewhere (a label that analyze uses; not adabn)."),
    preset: str = typer.Option("quick", "--preset",
                               help="tiny (a smoke test), quick (sized for a CPU: lr 1e-3, cosine decay over 10 epochs) or paper (SPEC 5 exactly: lr 1e-5, up to 100 epochs)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum number of epochs (overrides the preset)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (overrides the preset)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size; with mmd, per domain."),
    adv_share: Optional[float] = typer.Option(None, "--adv-share", help="Share of each Y10 batch replaced by its most damaging one-pixel corner change (default 0.5 with --method adv-1p). With --method mmd (or dann, coral, adabn) a share > 0 adds one-pixel adversarial training to the domain adaptation, e.g. --method mmd --adv-share 0.5."),
    adv_positions: Optional[int] = typer.Option(None, "--adv-positions", help="Pixel positions the adversarial corner search ranks (by first-order gain) and tries per image (default 8); the cost per step grows with it."),
    augment: str = typer.Option("none", "--augment", help="Training augmentation: " + "; ".join(f"{k}: {v}" for k, v in AUGMENTATIONS.items()) + ". survey-mix combines with any method (e.g. --method mmd --augment survey-mix) and needs raw electrons (not a dataset imported with --stretch none)."),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="Adam weight decay (paper 1e-3 regular, 1e-4 with domain adaptation)."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Early stopping: epochs without a lower validation loss."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, batch order); the same seed repeats a CPU run exactly."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when there is one), cpu or cuda."),
    devices: Optional[int] = typer.Option(None, "--devices", help="Number of devices (GPUs, or CPU processes) for Lightning DDP."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="Number of nodes for Lightning DDP."),
    precision: Optional[str] = typer.Option(None, "--precision", help="32-true (the paper, the default), "
                                            "bf16-mixed (faster on recent GPUs and AMX CPUs; the report says "
                                            "so) or 16-mixed (GPU only)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (slow start; pays off on long runs)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from checkpoints/last.ckpt (a finished run is left as it is)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in --out."),
    method_settings: Optional[dict[str, Any]] = None,
) -> None:
    """The ``train`` command with the method options gathered in ``method_settings`` (flat names, e.g.
    ``{"mmd_weight": 0.1}``; None values are options not given): see :class:`TrainCommand`."""
    method_settings = dict(method_settings or {})
    if model_file is not None:
        _refuse_training_options({
            **{"--" + key.replace("_", "-"): value for key, value in method_settings.items()},
            "--epochs": epochs, "--lr": lr, "--batch-size": batch_size, "--weight-decay": weight_decay,
            "--adv-share": adv_share, "--adv-positions": adv_positions,
            "--augment": None if augment == "none" else augment,
            "--patience": patience, "--devices": devices, "--num-nodes": num_nodes, "--precision": precision,
            "--compile": True if compile_ else None, "--resume": True if resume else None,
            "--model": None if model == "convnet" else model})
        typer.echo(str(_adopt(model_file, data, out, latent_layer=latent_layer, method=method, seed=seed,
                              device=device, overwrite=overwrite)))
        return
    if latent_layer is not None:
        raise OptionError("--latent-layer goes with --model-file (a TorchScript model without embed/head); the "
                          "package's own models have their 256-d latent")
    run = _train_run(data, out, preset, device=device, resume=resume, overwrite=overwrite, model=model,
                     method=method, seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                     **method_settings,
                     adv_share=adv_share, adv_positions=adv_positions,
                     augment=None if augment == "none" else augment, patience=patience, precision=precision, devices=devices, num_nodes=num_nodes,
                     compile=True if compile_ else None)
    typer.echo(str(run))


def _refuse_training_options(training_only: dict[str, Any]) -> None:
    """Refuse, naming the first, any training option given (not None) together with --model-file."""
    given = [name for name, value in training_only.items() if value is not None]
    if given:
        raise OptionError(f"{given[0]} does not apply to --model-file (the model was trained elsewhere and "
                          "is adopted as it is)")


def _adopt(model_file: Path, data: Path, out: Path, *, latent_layer: Optional[str], method: str, seed: int,
           device: str, overwrite: bool) -> Path:
    """Adopt a TorchScript model trained elsewhere into the run folder ``out``; the run folder."""
    from deepadversaries.models.adopt import adopt_model  # deferred for start-up time (torch)

    return adopt_model(model_file, data, out, latent_layer=latent_layer, method=method, seed=seed,
                       device=device, overwrite=overwrite)


def _train_run(data: Path, out: Path, preset: str, *, device: str, resume: bool, overwrite: bool,
               **settings: Any) -> Path:
    """Train a model of the package with the preset and the options given (``settings``); the run folder."""
    from deepadversaries.devices import resolve_device  # deferred for start-up time (torch, Lightning)
    from deepadversaries.training.train import train_model

    config = TrainConfig.from_preset(preset, device_type=resolve_device(device).type, **settings)
    return train_model(data, out, config, device=device, resume=resume, overwrite=overwrite)
