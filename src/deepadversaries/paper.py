"""The paper's own numbers (Ćiprijanović et al. 2022, Mach. Learn.: Sci. Technol. 3 035007).

Transcribed from its Tables 2–5 and sections 2.1, 4.1, 5.2–5.3, for the reports to print
beside ours. Nothing is computed from them.
"""

from __future__ import annotations

from typing import Any

#: Test-set metrics. "resnet18": Table 2; "convnet": Table 4 (Y10 and Y1 columns,
#: "Reg" = regular training, "DA" = MMD domain adaptation).
PAPER_METRICS: dict[str, dict[str, dict[str, dict[str, float]]]] = {
    "resnet18": {  # Table 2
        "regular": {"Y10": {"accuracy": 0.72, "precision": 0.76, "recall": 0.72, "f1": 0.72},
                    "Y1": {"accuracy": 0.43, "precision": 0.61, "recall": 0.43, "f1": 0.36}},
        "mmd": {"Y10": {"accuracy": 0.82, "precision": 0.82, "recall": 0.82, "f1": 0.82},
                "Y1": {"accuracy": 0.66, "precision": 0.67, "recall": 0.66, "f1": 0.67}},
    },
    "convnet": {  # Table 4
        "regular": {"Y10": {"accuracy": 0.70, "precision": 0.72, "recall": 0.70, "f1": 0.70},
                    "Y1": {"accuracy": 0.48, "precision": 0.67, "recall": 0.48, "f1": 0.42}},
        "mmd": {"Y10": {"accuracy": 0.69, "precision": 0.70, "recall": 0.69, "f1": 0.69},
                "Y1": {"accuracy": 0.57, "precision": 0.62, "recall": 0.57, "f1": 0.58}},
    },
}
#: Latent distances d_E (median, mean, standard error) on the images flipped under both runs.
#: "resnet18": Table 3 (136 images; JS distance 0.64 for Y10-1P, section 5.3);
#: "convnet": Table 5 (134 images). Keys by method ("mmd": the paper's domain adaptation).
PAPER_DISTANCES: dict[str, dict[str, Any]] = {
    "resnet18": {"n": 136,  # Table 3
                 "Y10-Y1": {"regular": (18.1, 20.2, 1.0), "mmd": (26.4, 29.7, 1.5), "js": None},
                 "Y10-1P": {"regular": (16.0, 16.8, 0.4), "mmd": (35.8, 38.1, 1.3), "js": 0.64}},
    "convnet": {"n": 134,  # Table 5
                "Y10-Y1": {"regular": (6.3, 6.7, 0.2), "mmd": (6.9, 8.3, 0.3), "js": None},
                "Y10-1P": {"regular": (2.8, 3.1, 0.1), "mmd": (3.6, 4.1, 0.2), "js": None}},
}
#: The paper's own effects, as SPEC 10 states them (ConvNet from Tables 4/5, ResNet18 from Tables
#: 2/3), in the sign of our findings' effects: (a) regular Y1 − Y10 accuracy, (b) MMD − regular Y1
#: accuracy, (c) MMD − regular Y10 accuracy, (d) MMD / regular median d_E(Y10–1P) (3.6 / 2.8 and
#: 35.8 / 16.0, rounded). (e) has no number in the paper (it says DA needed more iterations).
PAPER_EFFECTS: dict[str, dict[str, float]] = {
    "a": {"convnet": -0.22, "resnet18": -0.29},
    "b": {"convnet": 0.09, "resnet18": 0.23},
    "c": {"convnet": -0.01, "resnet18": 0.10},
    "d": {"convnet": 1.3, "resnet18": 2.2},
}
#: The paper's data sizes and training (sections 2.1, 4.1); its attack sizes are
#: ``AttackConfig.from_preset("paper")``.
PAPER_SIZES = {"images": "≈35,000 (70:10:20)",
               "training": "Adam lr 1e-5, betas (0.7, 0.8), batch 128, up to 100 epochs, early stopping"}
