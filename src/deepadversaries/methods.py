"""The training methods as values: what each needs, its weight setting and its cited default.

Plain data, no torch: configs, stages and reports read it; :mod:`deepadversaries.adaptation.mmd`
builds each method's alignment term. ``METHODS`` is the package's list
(:data:`deepadversaries.METHODS`).

Checkpoint selection is the same label-free rule for every method: the epoch with the best
Y10 validation accuracy (ties: lower Y10 validation loss). Only Y10 labels are read; the Y1
validation accuracy is logged for information only. The alternatives are worse: the
validation alignment measure rewards a collapsed latent space, DANN's domain accuracy
oscillates, and reverse validation (Ganin et al. 2016) needs a second training per
candidate checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepadversaries import METHODS
from deepadversaries.errors import check_choice

#: how every method chooses its kept checkpoint (see the module docstring for why)
#: the share of each training batch that ``adv-1p`` replaces by one-pixel adversarial examples (the one
#: place it is declared; ``--adv-share`` overrides it, and adds the same examples to ``mmd``, ``dann``,
#: ``coral`` or ``adabn`` training): half, so every step still sees as many clean images as changed ones
ADV_1P_SHARE = 0.5
#: pixel positions the corner search of adv-1p ranks by first-order gain and tries per image
ADV_1P_POSITIONS = 8

CHECKPOINT_CRITERION = ("best Y10 validation accuracy, ties broken by the lower Y10 validation loss "
                        "(Y10 labels only; no Y1 label is read)")


@dataclass(frozen=True)
class MethodSpec:
    """What the training and evaluation stages need to know about one method.

    Attributes:
        name: the method's value (``--method``).
        summary: one line for help texts and reports.
        adapts_in_training: each training step takes an unlabelled Y1 batch of the same size
            as the labelled Y10 batch and adds :func:`alignment_loss`'s term (the paper's
            domain-adaptation weight decay, 1e-4, applies).
        adapts_before_inference: the trained model's batch-norm statistics are re-estimated
            on the unlabelled Y1 training images before any Y1 inference (``adabn``).
        weight_setting: name of the weight setting (``None``: the method has none).
        default_weight: its default.
        weight_source: where the default comes from.
        measure: the method's own alignment measure (a key of :data:`ALIGNMENT_MEASURES`).
        reference: the method's paper.
        checkpoint_criterion: the label-free (for Y1) rule that keeps the checkpoint.
        adversarial_share: the share of each Y10 batch replaced by one-pixel adversarial
            examples by default (:mod:`deepadversaries.training.adversarial`); 0: none.
    """

    name: str
    summary: str
    adapts_in_training: bool
    adapts_before_inference: bool
    weight_setting: str | None
    default_weight: float | None
    weight_source: str
    measure: str
    reference: str
    checkpoint_criterion: str = CHECKPOINT_CRITERION
    adversarial_share: float = 0.0


METHOD_SPECS: dict[str, MethodSpec] = {
    "regular": MethodSpec(
        name="regular", summary="weighted cross-entropy on labelled Y10 only",
        adapts_in_training=False, adapts_before_inference=False,
        weight_setting=None, default_weight=None, weight_source="",
        measure="mmd2", reference="Ćiprijanović et al. 2022 (SPEC 5)"),
    "mmd": MethodSpec(
        name="mmd", summary="+ λ·MMD²(z_Y10, z_Y1), multi-kernel Gaussian",
        adapts_in_training=True, adapts_before_inference=False,
        weight_setting="mmd_weight", default_weight=0.05,
        weight_source="the paper, λ = 0.05 (its published code used 0.01)",
        measure="mmd2", reference="Ćiprijanović et al. 2022, eq. 2"),
    "dann": MethodSpec(
        name="dann", summary="+ domain classifier behind a gradient reversal, λ_p = 2/(1+exp(−10p)) − 1",
        adapts_in_training=True, adapts_before_inference=False,
        weight_setting="dann_weight", default_weight=1.0,
        weight_source=("Ganin et al. 2016: the domain loss enters the objective with weight 1 and the adaptation "
                       "strength is the reversal factor λ_p (DomainBed's default DANN lambda is also 1)"),
        measure="proxy_a_distance", reference="Ganin et al. 2016, JMLR 17(59)"),
    "coral": MethodSpec(
        name="coral", summary="+ λ·‖C_Y10 − C_Y1‖²_F / (4d²), Deep CORAL",
        adapts_in_training=True, adapts_before_inference=False,
        weight_setting="coral_weight", default_weight=1.0,
        weight_source=("DomainBed's default CORAL weight 1 (Gulrajani & Lopez-Paz 2021, mmd_gamma; its penalty "
                       "is the mean squared covariance difference, 4x this normalisation, plus a mean term). "
                       "Sun & Saenko 2016 choose λ so that the classification and CORAL losses are about equal "
                       "at the end of training, which needs a trained model: compare train_ce with train_coral "
                       "in log.csv and set --coral-weight ≈ train_ce / train_coral if they differ by more than "
                       "a factor 10"),
        measure="coral", reference="Sun & Saenko 2016, Deep CORAL"),
    "adabn": MethodSpec(
        name="adabn",
        summary="regular training, then batch-norm statistics re-estimated on unlabelled Y1 for Y1 inference",
        adapts_in_training=False, adapts_before_inference=True,
        weight_setting=None, default_weight=None, weight_source="",
        measure="mmd2", reference="Li et al. 2016, AdaBN"),
    "adv-1p": MethodSpec(
        name="adv-1p",
        summary=("regular training where a share of each batch is replaced by its most damaging one-pixel "
                 "change (corner values at sampled positions, lowest p(true))"),
        adapts_in_training=False, adapts_before_inference=False,
        weight_setting=None, default_weight=None, weight_source="",
        measure="mmd2", reference="Madry et al. 2018 (min-max adversarial training), with the one-pixel threat "
                                  "model of Su et al. 2019",
        adversarial_share=ADV_1P_SHARE),
}


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; :class:`OptionError` naming the choices if unknown."""
    return METHOD_SPECS[check_choice(method, METHOD_SPECS, "method")]


__all__ = ["ADV_1P_POSITIONS", "ADV_1P_SHARE", "CHECKPOINT_CRITERION", "METHODS", "METHOD_SPECS", "MethodSpec", "method_spec"]
