"""Benchmark of the attack engines: speed, the attack suite, and the anchor libraries.

One command, three sections on models fitted here (a few hundred Adam steps on the Y10
training split; speed does not depend on how well they are trained, success rates do):

speed (ConvNet and ResNet18 by default; ``--models`` also takes d4-convnet): on the same
  correctly classified test images and seeds,
  (a) the published per-candidate loop (``attacks.reference_attack``, the authors' keep
      rule: every candidate of a generation evaluated, one forward pass each);
  (b) the batched engine (``OnePixelDE``, same streams: the same search);
  (b16) the engine in bfloat16 autocast (successes re-checked in float32);
  (c) the model's best batched inference throughput;
  (bf) where (b) used a local evaluator (ConvNet, d4-convnet), the engine forced to full
      batched forward passes (``local=False``): the locality's speed-up.
  Prints the speed-up of (b) over (a), (b) as a fraction of (c), and whether (a) and (b)
  reached the same decisions.
suite (ConvNet): on the same images, targeted, the paper's success rule: DE (population
  400, 80 generations, keep fittest and keep first), Sparse-RS (k = 1, DE's budget of
  400 x 81 queries per target), the exhaustive map (8 corners: seconds per image, the
  exact flip rate under that value set, the share of those images DE found), and the
  flip rates under the ``physical`` value range; success-versus-queries and the queries
  Sparse-RS needs to reach DE's final success rate.
anchors (ConvNet): torchattacks ``OnePixel`` and ART ``PixelAttack`` (benchmark extras,
  ``pip install torchattacks adversarial-robustness-toolbox``) against our DE on the same
  model, images and budget (population 400, 80 generations), with the top-class rule
  (their rule): on the fitted ConvNet (untargeted), and on the hand-built ConvNet of the
  tests whose answer is known (targeted: only a bright g pixel in rows and columns 16..31
  makes it elliptical). Success rate (re-checked here by a plain forward pass), queries
  (counted by a wrapper around the model) and wall time; a library that is missing or
  fails is reported as such.

    python benchmarks/attack.py [--quick] [--data DIR] [--workdir DIR] [--device cpu|cuda]
                                [--threads 2] [--sections speed,suite,anchors]

Without ``--data`` a small dataset (400 galaxies) is simulated into the work folder
(``--workdir``, default a folder in the system's temporary directory; fitted models are
cached there too). Ratios are measured side by side in one run; the last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from deepadversaries.attacks.de import OnePixelDE, reference_attack  # noqa: E402
from deepadversaries.attacks.evaluators import optimized_for_inference  # noqa: E402
from deepadversaries.attacks.values import make_value_range  # noqa: E402
from deepadversaries.cli import main as cli_main  # noqa: E402
from deepadversaries.data.dataset import apply_stretch, invert_stretch, load_dataset  # noqa: E402
from deepadversaries.devices import resolve_device  # noqa: E402
from deepadversaries.attacks.exhaustive import ExhaustiveSearch  # noqa: E402
from deepadversaries.models.networks import build_model  # noqa: E402
from deepadversaries.attacks.sparse_rs import SparseRS  # noqa: E402

#: (images, iteration cap) for the speed section's (a) and (b); (a) costs pop x (cap + 1) passes per target
SIZES = {
    "full": {"convnet": (12, 8), "resnet18": (4, 2), "d4-convnet": (4, 3)},
    "quick": {"convnet": (4, 3), "resnet18": (2, 1), "d4-convnet": (2, 1)},
}
FIT_STEPS = {"convnet": 300, "resnet18": 100, "d4-convnet": 150}
#: images of the suite and anchor sections
SUITE_IMAGES = {"full": 12, "quick": 4}
ANCHOR_IMAGES = {"full": 4, "quick": 2}
POP, GENERATIONS = 400, 80
#: query marks of the success-versus-queries table (per image, over the targets tried)
QUERY_MARKS = (400, 1000, 2000, 4000, 8000, 16000, 32400, 64800, 80000)
SIM_GALAXIES = 400


def find_data(arg: str | None, workdir: Path) -> Path:
    """The dataset: ``--data``, or a small one simulated (once) into the work folder."""
    if arg:
        return Path(arg)
    out = workdir / f"sim-{SIM_GALAXIES}"
    if not (out / "dataset.json").is_file():
        print(f"simulating {SIM_GALAXIES} galaxies into {out} ...", flush=True)
        code = cli_main(["simulate", "--out", str(out), "--n-galaxies", str(SIM_GALAXIES), "--seed", "0"])
        if code:
            raise SystemExit(f"simulating the benchmark's dataset failed (exit status {code})")
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


def test_images(model: torch.nn.Module, data: Path, device: torch.device, seed: int, n: int):
    """``n`` correctly classified Y10 test images (stretched), their labels, test indices, and
    the stretch constants; plus the model's accuracy on the pool they were drawn from."""
    ds = load_dataset(data)
    raw = ds.images("Y10", "test", stretched=False)
    pool = np.sort(np.random.default_rng(seed).choice(len(raw), min(len(raw), 200), replace=False))
    lo, hi = ds.stretch("Y10")
    x = apply_stretch(np.asarray(raw[pool]), lo, hi)
    labels = ds.labels("test")[pool]
    with torch.inference_mode():
        pred = torch.cat([model.to(device)(torch.from_numpy(x[a:a + 64]).to(device))[0].argmax(1).cpu()
                          for a in range(0, len(x), 64)]).numpy()
    ok = np.flatnonzero(pred == labels)
    pick = ok[np.random.default_rng(seed + 1).permutation(len(ok))[:n]]
    return x[pick], labels[pick], pool[pick], (lo, hi), float((pred == labels).mean()), len(pool)


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


def timed(device: torch.device, fn):
    """(seconds, fn())."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


# --------------------------------------------------------------------------------------
# speed: the engine against the published loop
# --------------------------------------------------------------------------------------
def bench_speed(name: str, model: torch.nn.Module, data: Path, device: torch.device, quick: bool, seed: int,
                engine_images: int = 0) -> dict:
    n_images, max_iter = SIZES["quick" if quick else "full"][name]
    imgs, labs, keys, _, acc, n_pool = test_images(model, data, device, seed, max(n_images, engine_images))
    many = (imgs, labs, keys)
    imgs, labs, keys = imgs[:n_images], labs[:n_images], keys[:n_images]
    print(f"\n== speed, {name}: {len(imgs)} correctly classified test images (of {n_pool} drawn, accuracy "
          f"{acc:.2f}), population {POP}, iteration cap {max_iter}, device {device}", flush=True)

    def engine(bf16: bool = False, local: bool | None = None):
        atk = OnePixelDE(model, pop_size=POP, max_iter=max_iter, seed=seed, device=device, bf16=bf16, local=local)
        t, res = timed(device, lambda: atk.results(imgs, labs, keys=keys))
        return t, res, atk.last_evaluator

    t_b1, res_b, evaluator = engine()
    t0 = time.perf_counter()
    res_a = []
    for img, lab, key in zip(imgs, labs, keys):
        tried = []
        for t in (c for c in range(3) if c != lab):
            tried.append(reference_attack(model, img, int(lab), t, pop_size=POP, max_iter=max_iter, seed=seed,
                                          key=int(key), device=device))
            if tried[-1].success:
                break
        res_a.append((tried, tried[-1] if tried[-1].success else max(tried, key=lambda r: r.fitness)))
    sync(device)
    t_a = time.perf_counter() - t0
    t_b2, res_b2, _ = engine()
    t_b = (t_b1 + t_b2) / 2
    t_bf, res_bf, _ = engine(bf16=True)
    local_used = evaluator.startswith("Local")
    if local_used:  # the same search with full batched forward passes: what the locality buys
        t_full, res_full, _ = engine(local=False)

    evals_a = sum(r.evaluations for tried, _ in res_a for r in tried)
    evals_b = sum(r.evaluations for r in res_b)
    succ_a = np.mean([best.success for _, best in res_a])
    succ_b = np.mean([r.success for r in res_b])
    it_a = np.mean([best.iterations for _, best in res_a])
    it_b = np.mean([r.iterations for r in res_b])
    same = sum((best.success, best.target, best.iterations, best.pixels.tolist())
               == (r.success, r.target, r.iterations, r.pixels.tolist()) for (_, best), r in zip(res_a, res_b))
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
    if local_used:
        out["full_passes"] = {"seconds": t_full, "locality_speedup": t_full / t_b,
                              "same_outcome": sum((r.success, r.iterations, r.pixels.tolist())
                                                  == (f.success, f.iterations, f.pixels.tolist())
                                                  for r, f in zip(res_b, res_full))}
        print(f"(bf) engine, full passes: {t_full:8.1f} s: the local evaluator is {t_full / t_b:.1f}x faster; "
              f"same outcome on {out['full_passes']['same_outcome']}/{len(res_b)} images")
    if engine_images > len(imgs):  # the engine alone on more images: how close to peak it gets at scale
        atk = OnePixelDE(model, pop_size=POP, max_iter=max_iter, seed=seed, device=device)
        t_many, res_many = timed(device, lambda: atk.results(many[0], many[1], keys=many[2]))
        n_many = sum(r.evaluations for r in res_many)
        out["engine_many"] = {"images": len(res_many), "seconds": t_many, "evals_per_s": n_many / t_many,
                              "fraction_of_peak": n_many / t_many / peak,
                              "success_rate": float(np.mean([r.success for r in res_many]))}
        print(f"(b') engine alone on {len(res_many)} images: {t_many:.1f} s, {n_many / t_many:.0f} evaluations/s "
              f"= {n_many / t_many / peak:.2f} of peak, success {out['engine_many']['success_rate']:.2f}")
    print(f"(a) reference loop : {t_a:8.1f} s  {evals_a:7d} evaluations  {rate_a:8.0f} /s  "
          f"success {succ_a:.2f}  mean iterations {it_a:.2f}")
    print(f"(b) engine         : {t_b:8.1f} s  {evals_b:7d} evaluations  {rate_b:8.0f} /s  "
          f"success {succ_b:.2f}  mean iterations {it_b:.2f}  ({evaluator}; runs {t_b1:.1f} s, {t_b2:.1f} s)")
    bf = out["bf16"]
    print(f"(b16) engine, bf16 : {t_bf:8.1f} s  {bf['evals_per_s']:8.0f} evaluations/s  "
          f"success {bf['success_rate']:.2f}"
          f"  mean iterations {bf['mean_iterations']:.2f}  ({bf['rejected_claims']} claims rejected by the "
          f"float32 check): {bf['speedup']:.1f}x over (a)")
    print(f"(c) peak inference : {peak:8.0f} images/s ({peak_where})")
    print(f"speed-up (b) over (a): {out['speedup']:.1f}x wall time, {rate_b / rate_a:.1f}x per evaluation; "
          f"engine at {out['fraction_of_peak']:.2f} of peak; same outcome (success, target, iterations, pixel) on "
          f"{same}/{len(res_b)} images; engine repeatable: {stable}", flush=True)
    return out


# --------------------------------------------------------------------------------------
# the attack suite on the same images
# --------------------------------------------------------------------------------------
def success_curve(results, n: int) -> dict[int, float]:
    """Share of the n images flipped within each query mark."""
    q = [r.evaluations for r in results if r.success]
    return {m: sum(v <= m for v in q) / n for m in QUERY_MARKS}


def queries_to_reach(results, rate: float, n: int) -> int | None:
    """The fewest queries per image at which ``results`` flip a share ``rate`` of the n
    images (the k-th smallest success query count, k = ceil(rate n)); None if never."""
    k = math.ceil(rate * n - 1e-9)
    q = sorted(r.evaluations for r in results if r.success)
    if k == 0:
        return 0
    return q[k - 1] if len(q) >= k else None


def summarize(name: str, results, seconds: float, n: int) -> dict:
    ok = [r for r in results if r.success]
    q = [r.evaluations for r in ok]
    out = {"success_rate": len(ok) / n, "seconds": seconds, "seconds_per_image": seconds / n,
           "queries_total": int(sum(r.evaluations for r in results)),
           "median_queries_of_successes": float(np.median(q)) if q else None,
           "mean_p_target_of_successes": float(np.mean([r.p_target for r in ok])) if ok else None,
           "rejected_claims": int(sum(r.rejected for r in results))}
    p = out["mean_p_target_of_successes"]
    print(f"{name:28s} success {out['success_rate']:.2f}  {seconds:7.1f} s  "
          f"({out['queries_total'] / seconds:7.0f} queries/s)  median queries of successes "
          f"{out['median_queries_of_successes']}  mean p(target) {p if p is None else round(p, 3)}", flush=True)
    return out


def bench_suite(model: torch.nn.Module, data: Path, device: torch.device, quick: bool, seed: int) -> dict:
    n_images = SUITE_IMAGES["quick" if quick else "full"]
    imgs, labs, keys, (lo, hi), acc, n_pool = test_images(model, data, device, seed, n_images)
    n = len(imgs)
    physical = make_value_range("physical", partial(apply_stretch, lo=lo, hi=hi), partial(invert_stretch, hi=hi))
    print(f"\n== suite, convnet: {n} correctly classified test images (accuracy {acc:.2f} on {n_pool}); targeted, "
          f"the paper's rule; DE population {POP} x {GENERATIONS} generations, Sparse-RS k = 1 with "
          f"{POP * (GENERATIONS + 1)} queries per target; physical range [{physical.low[0]:.4f}, "
          f"{physical.high[0]:.4f}] (stretch lo {lo:.1f}, hi {hi:.1f} e-)", flush=True)
    runs = {
        "de_fittest": lambda: OnePixelDE(model, pop_size=POP, max_iter=GENERATIONS, seed=seed, device=device),
        "de_first": lambda: OnePixelDE(model, pop_size=POP, max_iter=GENERATIONS, seed=seed, device=device,
                                       keep="first"),
        "sparse_rs": lambda: SparseRS(model, pixels=1, max_queries=POP * (GENERATIONS + 1), seed=seed,
                                      device=device),
        "exhaustive": lambda: ExhaustiveSearch(model, device=device),
        "de_fittest_physical": lambda: OnePixelDE(model, pop_size=POP, max_iter=GENERATIONS, seed=seed,
                                                  device=device, value_range=physical),
        "exhaustive_physical": lambda: ExhaustiveSearch(model, device=device, value_range=physical),
    }
    results, out = {}, {"images": n, "physical_range": physical.describe()}
    for name, make in runs.items():
        atk = make()
        seconds, res = timed(device, lambda atk=atk: atk.results(imgs, labs, keys=keys))
        results[name] = res
        out[name] = summarize(name, res, seconds, n)
    ex, de = results["exhaustive"], results["de_fittest"]
    exact = [r.success for r in ex]
    out["exhaustive"]["flip_positions_per_image"] = [r.flip_positions() for r in ex]
    out["exhaustive"]["exact_flip_rate_corners"] = float(np.mean(exact))
    out["exhaustive"]["share_found_by_de"] = (round(float(np.mean([d.success for d, e in zip(de, ex) if e.success])), 4)
                                              if any(exact) else None)
    out["exhaustive"]["de_flips_beyond_corner_map"] = int(sum(d.success and not e.success for d, e in zip(de, ex)))
    out["exhaustive"]["rejected_claims"] = int(sum(r.rejected for r in ex))
    curves = {k: success_curve(results[k], n) for k in ("de_fittest", "de_first", "sparse_rs")}
    curves["exhaustive_bound"] = {m: float(np.mean(exact)) if m >= ex[0].evaluations else None for m in QUERY_MARKS}
    out["success_vs_queries"] = curves
    target_rate = out["de_fittest"]["success_rate"]
    out["queries_to_de_rate"] = {"de_rate": target_rate, **{k: queries_to_reach(results[k], target_rate, n)
                                                            for k in ("de_fittest", "de_first", "sparse_rs")}}
    print("success versus queries (share of images flipped within q queries per image):")
    print("  q       " + "".join(f"{m:>8d}" for m in QUERY_MARKS))
    for k, c in curves.items():
        print(f"  {k:18s}" + "".join(f"{'-' if v is None else f'{v:.2f}':>8s}" for v in c.values()))
    print(f"queries per image to reach DE's 80-generation success rate {target_rate:.2f}: "
          + ", ".join(f"{k} {v}" for k, v in out["queries_to_de_rate"].items() if k != "de_rate"))
    e = out["exhaustive"]
    print(f"exhaustive map: {e['seconds_per_image']:.2f} s per image ({ex[0].evaluations} evaluations, "
          f"{e['queries_total'] / e['seconds']:.0f}/s); "
          f"exact flip rate under the 8 corners {np.mean(exact):.2f}; DE found {e['share_found_by_de']} "
          f"of those; DE flips beyond the corner map {out['exhaustive']['de_flips_beyond_corner_map']}; flipping "
          f"positions per image {out['exhaustive']['flip_positions_per_image']}")
    print(f"physical range: DE {out['de_fittest_physical']['success_rate']:.2f} (input {target_rate:.2f}), exhaustive "
          f"{out['exhaustive_physical']['success_rate']:.2f} (input {np.mean(exact):.2f})", flush=True)
    return out


# --------------------------------------------------------------------------------------
# the anchor libraries
# --------------------------------------------------------------------------------------
class Counting(torch.nn.Module):
    """The classifier as the libraries expect it — logits (or probabilities) only — counting
    every image that goes through it."""

    def __init__(self, model: torch.nn.Module, probabilities: bool = False) -> None:
        super().__init__()
        self.model = model
        self.probabilities = probabilities
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += len(x)
        logits = self.model(x)[0]
        return torch.softmax(logits, dim=1) if self.probabilities else logits


def recheck(model: torch.nn.Module, clean: np.ndarray, adv: np.ndarray, labels: np.ndarray,
            targets: np.ndarray | None):
    """Per image, by a plain forward pass: flipped under the top-class rule (to the target,
    or away from the label) with at most one changed pixel; and the pixels changed."""
    with torch.inference_mode():
        pred = model(torch.as_tensor(np.asarray(adv, dtype=np.float32)))[0].argmax(1).numpy()
    # ART scales the image to 0..255 and back: float rounding, not a changed pixel
    changed = np.any(np.abs(np.asarray(adv, dtype=np.float32) - clean) > 1e-5, axis=1).reshape(len(adv), -1).sum(1)
    flipped = pred == targets if targets is not None else pred != labels
    return flipped & (changed <= 1), changed


def run_anchor(name: str, model: torch.nn.Module, imgs: np.ndarray, labs: np.ndarray,
               targets: np.ndarray | None) -> dict:
    """One library's one-pixel attack on the images (targeted if ``targets``), re-checked here."""
    wrapper = Counting(model, probabilities=name == "art").eval()
    t0 = time.perf_counter()
    try:
        if name == "torchattacks":
            import torchattacks

            atk = torchattacks.OnePixel(wrapper, pixels=1, steps=GENERATIONS, popsize=POP, inf_batch=POP)
            if targets is not None:
                wanted = torch.from_numpy(targets)
                atk.set_mode_targeted_by_function(lambda images, labels: wanted[: len(labels)])
            adv = atk(torch.from_numpy(imgs), torch.from_numpy(labs)).numpy()
        else:
            from art.attacks.evasion import PixelAttack
            from art.estimators.classification import PyTorchClassifier

            clf = PyTorchClassifier(model=wrapper, loss=torch.nn.CrossEntropyLoss(), input_shape=imgs.shape[1:],
                                    nb_classes=3, clip_values=(0.0, 1.0), channels_first=True, device_type="cpu")
            atk = PixelAttack(clf, th=1, es=1, max_iter=GENERATIONS, targeted=targets is not None, verbose=False)
            adv = atk.generate(imgs, targets if targets is not None else labs)
    except Exception as exc:  # noqa: BLE001 - a library that does not run is a result, reported as such
        return {"ran": False, "error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0,
                "traceback_tail": traceback.format_exc().strip().splitlines()[-3:]}
    seconds = time.perf_counter() - t0
    ok, changed = recheck(model, imgs, adv, labs, targets)
    return {"ran": True, "success_rate": float(np.mean(ok)), "claimed_changes_over_one_pixel": int(np.sum(changed > 1)),
            "queries_total": wrapper.count, "queries_per_image": wrapper.count / len(imgs), "seconds": seconds,
            "seconds_per_image": seconds / len(imgs)}


def compare_anchors(title: str, model: torch.nn.Module, imgs: np.ndarray, labs: np.ndarray, keys: np.ndarray,
                    targets: np.ndarray | None, seed: int) -> dict:
    """Ours and the two libraries on the same images and budget, top-class rule."""
    n = len(imgs)
    mode = "untargeted" if targets is None else "targeted"
    print(f"\n== anchors, {title}: {n} images, {mode}, top-class rule, population {POP}, {GENERATIONS} "
          f"generations, CPU", flush=True)
    out: dict = {"images": n, "mode": mode}
    atk = OnePixelDE(model, pop_size=POP, max_iter=GENERATIONS, mode=mode, success="top-class", seed=seed,
                     device="cpu")
    seconds, res = timed(torch.device("cpu"), lambda: atk.results(imgs, labs, targets=targets, keys=keys,
                                                          return_images=True))
    ok, _ = recheck(model, imgs, np.stack([r.image for r in res]), labs, targets)
    out["ours"] = {"ran": True, "success_rate": float(np.mean(ok)),
                   "claimed_success_rate": float(np.mean([r.success for r in res])),
                   "queries_total": int(sum(r.evaluations for r in res)),
                   "queries_per_image": sum(r.evaluations for r in res) / n, "seconds": seconds,
                   "seconds_per_image": seconds / n}
    for lib in ("torchattacks", "art"):
        out[lib] = run_anchor(lib, model, imgs, labs, targets)
    for lib in ("ours", "torchattacks", "art"):
        r = out[lib]
        if r["ran"]:
            print(f"{lib:13s} success {r['success_rate']:.2f}  queries/image {r['queries_per_image']:9.0f}  "
                  f"{r['seconds']:7.1f} s ({r['seconds_per_image']:.2f} s/image)", flush=True)
        else:
            print(f"{lib:13s} did not run: {r['error']}", flush=True)
    for lib in ("torchattacks", "art"):
        if out[lib]["ran"]:
            out[lib]["time_ratio_to_ours"] = out[lib]["seconds"] / seconds
    return out


def bench_anchors(model: torch.nn.Module, data: Path, quick: bool, seed: int) -> dict:
    """The fitted ConvNet (untargeted) and the hand-built ConvNet with a known answer (targeted)."""
    n_images = ANCHOR_IMAGES["quick" if quick else "full"]
    imgs, labs, keys, *_ = test_images(model.cpu(), data, torch.device("cpu"), seed, n_images)
    out = {"fitted": compare_anchors("fitted ConvNet", model, imgs, labs, keys, None, seed)}
    # known answer: only a bright g pixel (> ~0.93) in rows and columns 16..31 makes it elliptical
    sys.path.insert(0, str(ROOT / "tests"))
    from attack_support import bright_pixel_convnet

    x = (0.45 + 0.1 * np.random.default_rng(seed).random((n_images, 3, 100, 100))).astype(np.float32)
    with torch.inference_mode():
        split = float(bright_pixel_convnet().embed(torch.from_numpy(x))[:, 1].mean()) + 0.05  # all spiral
        known = bright_pixel_convnet(split)
        labels = known(torch.from_numpy(x))[0].argmax(1).numpy()
    out["known_answer"] = compare_anchors("hand-built ConvNet with a known answer (target elliptical: a bright g "
                                          "pixel in rows/columns 16-31)", known, x, labels, np.arange(len(x)),
                                          np.ones(len(x), dtype=np.int64), seed)
    return out


# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and iterations")
    parser.add_argument("--data", help="dataset folder (default: a small dataset simulated into --workdir)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "deepadv-bench-attack"),
                        help="folder for the simulated dataset and the fitted models (default: in the system's "
                             "temporary directory)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on the CPU (default 2)")
    parser.add_argument("--models", default="convnet,resnet18", help="models of the speed section")
    parser.add_argument("--sections", default="speed,suite,anchors", help="comma-separated sections to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="Adam steps to fit each model (default 300 ConvNet, 100 ResNet18)")
    parser.add_argument("--engine-images", type=int, default=0,
                        help="also time the engine alone on this many images (useful on a GPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = find_data(args.data, workdir)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    print(f"data {data}; device {device}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"sections {', '.join(sections)}", flush=True)
    wanted = set(args.models.split(",")) if "speed" in sections else set()
    wanted |= {"convnet"} if {"suite", "anchors"} & set(sections) else set()
    models = {name: fitted_model(name, data, device, args.fit_steps or FIT_STEPS[name], workdir / "models")
              for name in sorted(wanted)}
    summary: dict = {"device": str(device), "threads": torch.get_num_threads()}
    if "speed" in sections:
        for name in args.models.split(","):
            r = bench_speed(name, models[name], data, device, args.quick, args.seed, args.engine_images)
            summary[f"speedup_{name}"] = round(r["speedup"], 2)
            summary[f"fraction_of_peak_{name}"] = round(r["fraction_of_peak"], 3)
            for key in ("success_rate_reference", "success_rate_engine", "mean_iterations_reference",
                        "mean_iterations_engine", "engine_evals_per_s", "reference_evals_per_s", "peak_images_per_s"):
                summary[f"{key}_{name}"] = round(r[key], 3)
            summary[f"same_outcome_{name}"] = r["same_outcome"]
            summary[f"speedup_{name}_bf16"] = round(r["bf16"]["speedup"], 2)
            if "full_passes" in r:
                summary[f"locality_speedup_{name}"] = round(r["full_passes"]["locality_speedup"], 2)
            if "engine_many" in r:
                summary[f"engine_many_{name}"] = {k: round(v, 3) if isinstance(v, float) else v
                                                  for k, v in r["engine_many"].items()}
    if "suite" in sections:
        s = bench_suite(models["convnet"], data, device, args.quick, args.seed)
        summary["suite_convnet"] = {
            "images": s["images"],
            "success_rate": {k: round(s[k]["success_rate"], 3) for k in
                             ("de_fittest", "de_first", "sparse_rs", "exhaustive", "de_fittest_physical",
                              "exhaustive_physical")},
            "mean_p_target": {k: s[k]["mean_p_target_of_successes"] and round(s[k]["mean_p_target_of_successes"], 3)
                              for k in ("de_fittest", "de_first")},
            "exhaustive_s_per_image": round(s["exhaustive"]["seconds_per_image"], 2),
            "exhaustive_share_found_by_de": s["exhaustive"]["share_found_by_de"],
            "exhaustive_flip_positions_per_image": s["exhaustive"]["flip_positions_per_image"],
            "queries_to_de_rate": {k: round(v, 4) if isinstance(v, float) else v
                                   for k, v in s["queries_to_de_rate"].items()},
            "success_vs_queries": {k: {m: None if v is None else round(v, 4) for m, v in c.items()}
                                   for k, c in s["success_vs_queries"].items()},
        }
    if "anchors" in sections:
        a = bench_anchors(models["convnet"], data, args.quick, args.seed)
        def brief(r: dict) -> dict:
            if not r["ran"]:
                return {"ran": False, "error": r["error"]}
            return {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items() if k != "traceback_tail"}

        summary["anchors"] = {case: {"images": a[case]["images"], "mode": a[case]["mode"],
                                     **{lib: brief(a[case][lib]) for lib in ("ours", "torchattacks", "art")}}
                              for case in ("fitted", "known_answer")}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
