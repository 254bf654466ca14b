"""Which corruption conclusions survive another stretch: the regular and MMD ConvNet of one seed, each
trained and scored with the paper stretch and with another (e.g. asinh), compared per corruption.

    python scripts/compare_stretches.py --paper STUDY_A/cells --other STUDY_B/cells [--seed 0] [--json OUT]

Each folder holds the study cells ``convnet_regular_s<seed>`` and ``convnet_mmd_s<seed>`` with their
``robustness`` (Y10) and ``robustness_Y1`` results (``deepadv study`` writes both). Per domain and
corruption it prints, as a Markdown table: the regular and MMD models' mean accuracy over the
severities, the fraction of pixels the paper stretch clips, whether the regular model is degraded
(the stage's sign test), the paired ΔE of MMD against regular with its interval, and whether the two
stretches reach the same conclusion (the same degraded status and the same verdict of the ΔE
interval: above zero, below zero or across it); then MMD's mCE under each stretch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load(cells: Path, method: str, seed: int, domain: str) -> dict:
    sub = "robustness" if domain == "Y10" else "robustness_Y1"
    return json.loads((cells / f"convnet_{method}_s{seed}" / sub / "summary.json").read_text())


def verdict(delta: dict) -> str:
    """The ΔE interval's verdict: MMD worse (above 0), better (below 0) or no difference shown."""
    if delta["ci_low"] > 0:
        return "MMD worse"
    return "MMD better" if delta["ci_high"] < 0 else "no difference shown"


def mean_accuracy(summary: dict, name: str) -> tuple[float, float]:
    """The mean accuracy over a corruption's severities and the mean fraction of clipped pixels."""
    rows = [r for r in summary["results"] if r["corruption"] == name]
    return (sum(r["accuracy"] for r in rows) / len(rows),
            sum(float(r["frac_clipped"] or 0.0) for r in rows) / len(rows))


def fmt_mce(m: dict | None) -> str:
    return "—" if not m or m.get("value") is None else f"{m['value']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}]"


def compare(paper: Path, other: Path, seed: int) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for domain in ("Y10", "Y1"):
        p_reg, p_mmd = load(paper, "regular", seed, domain), load(paper, "mmd", seed, domain)
        o_reg, o_mmd = load(other, "regular", seed, domain), load(other, "mmd", seed, domain)
        print(f"\n#### {domain} (seed {seed}, {p_reg['n']} test images)\n")
        print(f"Clean accuracy: paper stretch regular {p_reg['clean']['accuracy']:.3f}, MMD "
              f"{p_mmd['clean']['accuracy']:.3f}; other stretch regular {o_reg['clean']['accuracy']:.3f}, MMD "
              f"{o_mmd['clean']['accuracy']:.3f}.\n")
        print("| corruption | paper: regular / MMD acc. | clipped (paper) | paper: degraded | paper: ΔE MMD − regular "
              "| other: regular / MMD acc. | other: degraded | other: ΔE MMD − regular | same conclusion |")
        print("|---|---|---|---|---|---|---|---|---|")
        rows = []
        for name, pc in p_mmd["corruption_errors"]["corruptions"].items():
            oc = o_mmd["corruption_errors"]["corruptions"][name]
            (pr, clipped), (pm, _) = mean_accuracy(p_reg, name), mean_accuracy(p_mmd, name)
            (orr, _), (om, _) = mean_accuracy(o_reg, name), mean_accuracy(o_mmd, name)
            pd, od = pc["delta_points"], oc["delta_points"]
            pdeg, odeg = pc["baseline_degradation"]["degraded"], oc["baseline_degradation"]["degraded"]
            agree = pdeg == odeg and verdict(pd) == verdict(od)
            rows.append({"corruption": name, "paper_degraded": pdeg, "other_degraded": odeg, "paper_delta": pd,
                         "other_delta": od, "paper_verdict": verdict(pd), "other_verdict": verdict(od),
                         "same": agree, "clipped": clipped})
            print(f"| {name} | {pr:.3f} / {pm:.3f} | {100 * clipped:.1f} % | {'yes' if pdeg else 'no'} | "
                  f"{pd['value']:+.1f} [{pd['ci_low']:+.1f}, {pd['ci_high']:+.1f}] | {orr:.3f} / {om:.3f} | "
                  f"{'yes' if odeg else 'no'} | {od['value']:+.1f} [{od['ci_low']:+.1f}, {od['ci_high']:+.1f}] | "
                  f"{'yes' if agree else '**no**'} |")
        print(f"\nMMD's mCE: paper stretch {fmt_mce(p_mmd['corruption_errors']['mce'])}, other "
              f"{fmt_mce(o_mmd['corruption_errors']['mce'])}; the same conclusion on "
              f"{sum(r['same'] for r in rows)} of {len(rows)} corruptions.")
        out[domain] = rows
    return out


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", type=Path, required=True, help="cells folder of the paper-stretch study")
    parser.add_argument("--other", type=Path, required=True, help="cells folder of the other stretch's study")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of both (default 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    args = parser.parse_args(argv)
    result = compare(args.paper, args.other, args.seed)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
