"""Benchmark of the one-pixel attack engine against the published per-candidate loop.

On one trained model per architecture, the same correctly classified test images and the
same seeds:

(a) the reference: the published loop, one forward pass per candidate, every candidate
    of a generation evaluated (``deepadversaries.attacks.reference_attack``);
(b) the engine (``OnePixelDE``): batched, chunked, several images at once, local
    recomputation for the ConvNet, early stop at the first successful candidate;
(b16) the engine with bfloat16 autocast (opt-in ``bf16=True``; a different rounding, so
    the same search only statistically; successes verified in float32);
(c) the model's best batched inference throughput (full 100x100 images; the plain model
    or the engine's optimised copy, NCHW or NHWC; the best batch size).

Both (a) and (b) run at population 400 and use the same random streams, so their
success and iteration counts must agree (they are the same search). (b) is timed before
and after (a) and the mean is used, to bracket drifts in machine load. Prints the
speed-up of (b) over (a) in wall time, (b)'s evaluations per second as a fraction of
(c), success rates and mean iterations; the last line is one JSON object.

    python benchmarks/attack.py [--quick] [--data DIR] [--device cpu|cuda] [--threads 2]

Models are fitted here with a few hundred plain Adam steps on the Y10 training split
(speed does not depend on how well they are trained; success rates do) and cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepadversaries.attacks import OnePixelDE, optimized_for_inference, reference_attack  # noqa: E402
from deepadversaries.data import apply_stretch, load_dataset  # noqa: E402
from deepadversaries.devices import resolve_device  # noqa: E402
from deepadversaries.models import build_model  # noqa: E402

DEFAULT_DATA = Path("/work/scratch/quick_data")
#: (images, iteration cap) for (a) and (b); (a) costs pop x (cap + 1) forward passes per target
SIZES = {
    "full": {"convnet": (12, 8), "resnet18": (4, 2)},
    "quick": {"convnet": (4, 3), "resnet18": (2, 1)},
}
FIT_STEPS = {"convnet": 300, "resnet18": 100}


def find_data(arg: str | None) -> Path:
    """The dataset to use: --data, the simulator's quick dataset, or generated toy data."""
    if arg:
        return Path(arg)
    if (DEFAULT_DATA / "dataset.json").is_file():
        return DEFAULT_DATA
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_toy_dataset

    out = Path(tempfile.gettempdir()) / "deepadv-bench-toy"
    if not (out / "labels_test.npy").is_file():
        make_toy_dataset(out, n={"train": 192, "valid": 24, "test": 96})
    return out


def fitted_model(name: str, data: Path, device: torch.device, steps: int, cache: Path) -> torch.nn.Module:
    """A model fitted with ``steps`` Adam steps (lr 1e-3, batch 32, class-weighted), cached."""
    key = hashlib.sha1(f"{data.resolve()}|{name}|{steps}|v1".encode()).hexdigest()[:12]
    path = cache / f"{name}-{key}.pt"
    model = build_model(name)
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    ds = load_dataset(data)
    x = torch.from_numpy(np.ascontiguousarray(ds.images("Y10", "train")))
    y = torch.from_numpy(ds.labels("train"))
    counts = torch.bincount(y, minlength=3).clamp(min=1).float()
    weights = (len(y) / (3 * counts)).to(device)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(y), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(x[idx].to(device))[0], y[idx].to(device), weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval().cpu()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    print(f"fitted {name}: {steps} steps in {time.perf_counter() - t0:.0f} s, last loss {loss.item():.3f}",
          flush=True)
    return model


@torch.inference_mode()
def peak_throughput(model: torch.nn.Module, device: torch.device, seconds: float) -> tuple[float, str]:
    """Best images/s of full forward passes over batch sizes: the plain model, or the engine's
    optimised copy (BatchNorm folded, fast 2x2 pooling) in NCHW or NHWC layout."""
    best, where = 0.0, ""
    sizes = [1, 2, 4, 8, 16, 32, 64, 128] + ([256, 512, 1024, 2048, 4096] if device.type == "cuda" else [])
    variants = (("plain", model.to(device).eval(), torch.contiguous_format),
                ("optimised", optimized_for_inference(model).to(device), torch.contiguous_format),
                ("optimised NHWC", optimized_for_inference(model, channels_last=True).to(device), torch.channels_last))
    for label, net, layout in variants:
        for bs in sizes:
            x = torch.rand(bs, 3, 100, 100, device=device).contiguous(memory_format=layout)
            net(x)
            sync(device)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                net(x)
                n += bs
            sync(device)
            rate = n / (time.perf_counter() - t0)
            if rate > best:
                best, where = rate, f"{label} model, batch {bs}"
    return best, where


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model(name: str, data: Path, device: torch.device, quick: bool, cache: Path, seed: int,
                engine_images: int = 0, fit_steps: int | None = None) -> dict:
    n_images, max_iter = SIZES["quick" if quick else "full"][name]
    model = fitted_model(name, data, device, fit_steps or FIT_STEPS[name], cache)
    ds = load_dataset(data)
    raw = ds.images("Y10", "test", stretched=False)
    pool = np.sort(np.random.default_rng(seed).choice(len(raw), min(len(raw), 200), replace=False))
    x = apply_stretch(np.asarray(raw[pool]), *ds.stretch("Y10"))
    labels = ds.labels("test")[pool]
    with torch.inference_mode():
        pred = torch.cat([model.to(device)(torch.from_numpy(x[a:a + 64]).to(device))[0].argmax(1).cpu()
                          for a in range(0, len(x), 64)]).numpy()
    ok = np.flatnonzero(pred == labels)
    pick = ok[np.random.default_rng(seed + 1).permutation(len(ok))[:n_images]]
    imgs, labs, keys = x[pick], labels[pick], pool[pick]
    print(f"\n== {name}: {len(pick)} correctly classified test images (of {len(pool)} drawn, accuracy "
          f"{(pred == labels).mean():.2f}), population 400, iteration cap {max_iter}, device {device}", flush=True)

    def engine(bf16: bool = False) -> tuple[float, list, str]:
        atk = OnePixelDE(model, pop_size=400, max_iter=max_iter, seed=seed, device=device, bf16=bf16)
        sync(device)
        t0 = time.perf_counter()
        res = atk(imgs, labs, keys=keys)
        sync(device)
        return time.perf_counter() - t0, res, atk.last_evaluator

    t_b1, res_b, evaluator = engine()
    t0 = time.perf_counter()
    res_a = []
    for img, lab, key in zip(imgs, labs, keys):
        tried = []
        for t in (c for c in range(3) if c != lab):
            tried.append(reference_attack(model, img, int(lab), t, pop_size=400, max_iter=max_iter, seed=seed,
                                          key=int(key), device=device))
            if tried[-1].success:
                break
        res_a.append((tried, tried[-1] if tried[-1].success else max(tried, key=lambda r: r.fitness)))
    sync(device)
    t_a = time.perf_counter() - t0
    t_b2, res_b2, _ = engine()
    t_b = (t_b1 + t_b2) / 2
    t_bf, res_bf, _ = engine(bf16=True)

    evals_a = sum(r.evaluations for tried, _ in res_a for r in tried)
    evals_b = sum(r.evaluations for r in res_b)
    succ_a = np.mean([best.success for _, best in res_a])
    succ_b = np.mean([r.success for r in res_b])
    it_a = np.mean([best.iterations for _, best in res_a])
    it_b = np.mean([r.iterations for r in res_b])
    same = sum((best.success, best.target, best.iterations) == (r.success, r.target, r.iterations)
               for (_, best), r in zip(res_a, res_b))
    stable = all((r.success, r.iterations, r.pixels.tolist()) == (s.success, s.iterations, s.pixels.tolist())
                 for r, s in zip(res_b, res_b2))
    peak, peak_where = peak_throughput(model, device, 0.5 if quick else 1.0)
    rate_a, rate_b = evals_a / t_a, evals_b / t_b
    out = {
        "speedup": t_a / t_b, "fraction_of_peak": rate_b / peak, "peak_images_per_s": peak, "peak_at": peak_where,
        "reference_s": t_a, "engine_s": t_b, "engine_runs_s": [t_b1, t_b2], "reference_evals": evals_a,
        "engine_evals": evals_b, "reference_evals_per_s": rate_a, "engine_evals_per_s": rate_b,
        "evaluator": evaluator, "success_rate_reference": float(succ_a), "success_rate_engine": float(succ_b),
        "mean_iterations_reference": float(it_a), "mean_iterations_engine": float(it_b),
        "same_outcome": f"{same}/{len(res_b)}", "engine_deterministic": stable, "images": len(res_b),
        "max_iter": max_iter,
        "bf16": {"speedup": t_a / t_bf, "seconds": t_bf, "evals_per_s": sum(r.evaluations for r in res_bf) / t_bf,
                 "success_rate": float(np.mean([r.success for r in res_bf])),
                 "mean_iterations": float(np.mean([r.iterations for r in res_bf])),
                 "rejected_claims": int(sum(r.rejected for r in res_bf))},
    }
    if engine_images > len(pick):  # the engine alone on more images: how close to peak it gets at scale
        many = ok[np.random.default_rng(seed + 1).permutation(len(ok))[:engine_images]]
        atk = OnePixelDE(model, pop_size=400, max_iter=max_iter, seed=seed, device=device)
        sync(device)
        t0 = time.perf_counter()
        res_many = atk(x[many], labels[many], keys=pool[many])
        sync(device)
        t_many = time.perf_counter() - t0
        n_many = sum(r.evaluations for r in res_many)
        out["engine_many"] = {"images": len(many), "seconds": t_many, "evals_per_s": n_many / t_many,
                              "fraction_of_peak": n_many / t_many / peak,
                              "success_rate": float(np.mean([r.success for r in res_many]))}
        print(f"(b') engine alone on {len(many)} images: {t_many:.1f} s, {n_many / t_many:.0f} evaluations/s "
              f"= {n_many / t_many / peak:.2f} of peak, success {out['engine_many']['success_rate']:.2f}")
    print(f"(a) reference loop : {t_a:8.1f} s  {evals_a:7d} evaluations  {rate_a:8.0f} /s  "
          f"success {succ_a:.2f}  mean iterations {it_a:.2f}")
    print(f"(b) engine         : {t_b:8.1f} s  {evals_b:7d} evaluations  {rate_b:8.0f} /s  "
          f"success {succ_b:.2f}  mean iterations {it_b:.2f}  ({evaluator}; runs {t_b1:.1f} s, {t_b2:.1f} s)")
    bf = out["bf16"]
    print(f"(b16) engine, bf16 : {t_bf:8.1f} s  {bf['evals_per_s']:8.0f} evaluations/s  success {bf['success_rate']:.2f}"
          f"  mean iterations {bf['mean_iterations']:.2f}  ({bf['rejected_claims']} claims rejected by the "
          f"float32 check): {bf['speedup']:.1f}x over (a)")
    print(f"(c) peak inference : {peak:8.0f} images/s ({peak_where})")
    print(f"speed-up (b) over (a): {out['speedup']:.1f}x wall time, {rate_b / rate_a:.1f}x per evaluation; "
          f"engine at {out['fraction_of_peak']:.2f} of peak; same outcome on {same}/{len(res_b)} images; "
          f"engine repeatable: {stable}", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and iterations (a few minutes on a CPU)")
    parser.add_argument("--data", help="dataset folder (default: /work/scratch/quick_data, else generated toy data)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on the CPU (default 2)")
    parser.add_argument("--models", default="convnet,resnet18", help="comma-separated models to benchmark")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "deepadv-bench-models"),
                        help="folder caching the fitted models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="Adam steps to fit each model (default 300 ConvNet, 150 ResNet18)")
    parser.add_argument("--engine-images", type=int, default=0,
                        help="also time the engine alone on this many images (useful on a GPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = find_data(args.data)
    print(f"data {data}; device {device}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = {name: bench_model(name, data, device, args.quick, Path(args.cache), args.seed, args.engine_images,
                               args.fit_steps)
               for name in args.models.split(",")}
    summary = {}
    for name, r in results.items():
        summary[f"speedup_{name}"] = round(r["speedup"], 2)
        summary[f"fraction_of_peak_{name}"] = round(r["fraction_of_peak"], 3)
    for name, r in results.items():
        for key in ("success_rate_reference", "success_rate_engine", "mean_iterations_reference",
                    "mean_iterations_engine", "engine_evals_per_s", "reference_evals_per_s", "peak_images_per_s"):
            summary[f"{key}_{name}"] = round(r[key], 3)
        summary[f"same_outcome_{name}"] = r["same_outcome"]
        summary[f"speedup_{name}_bf16"] = round(r["bf16"]["speedup"], 2)
        if "engine_many" in r:
            summary[f"engine_many_{name}"] = {k: round(v, 3) if isinstance(v, float) else v
                                              for k, v in r["engine_many"].items()}
    summary["device"] = str(device)
    summary["threads"] = torch.get_num_threads()
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
