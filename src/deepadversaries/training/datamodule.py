"""The training data held in memory as tensors, batches drawn by index (no worker processes).

Much faster on a small CPU than a worker-based DataLoader: the stretched Y10 (and, for a
method that adapts during training, Y1) images are loaded once, moved to the GPU when they
fit, and each batch is one indexing operation. :class:`IndexBatches` reshuffles from
(seed, epoch), so a resumed run draws the same batches as an uninterrupted one, and shards
over DDP ranks; with a target domain it pairs each labelled Y10 batch with an unlabelled Y1
batch of the same size.

With ``--augment survey-mix`` (:mod:`deepadversaries.training.survey_mix`) the raw Y10 training
electrons are kept too, and each training batch gains, after its usual tensors, the
:data:`~deepadversaries.training.survey_mix.N_VIEWS` augmented views of its Y10 images (model
input, on the CPU; Lightning moves them with the batch). Their generator is seeded from the
run's seed and the batch's indices, so a resumed run draws the same views as an uninterrupted one.
When training on a GPU, :class:`AugmentedBatches` has one background thread build them
:data:`PREFETCH_BATCHES` batches ahead (the corruptions are NumPy, SciPy and CFITSIO code that can
run beside the GPU's step), which changes when they are computed, never what they are. On a CPU
they are built in step: the training step already uses every core, and on the shared 2-core
machine building them ahead made a survey-mix step slower (9.4 s against 7.6 s at batch 128).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

import lightning as L

from deepadversaries.config import TrainConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import OptionError
from deepadversaries.training.survey_mix import SurveyMix

#: the stream of the survey-mix generator, apart from the batch order's (0: Y10, 1: Y1)
AUGMENT_STREAM = 2
#: survey-mix: batches whose views the background thread builds ahead of the one in use (Lightning itself
#: fetches one batch ahead, so 2 keeps one batch's views building while the model trains)
PREFETCH_BATCHES = 2


class IndexBatches(Sampler):
    """Batches of indices, reshuffled each epoch from (seed, epoch); sharded over DDP ranks.

    With ``n_target`` it yields pairs (source indices, target indices), the target drawn from
    its own permutation, so that an unlabelled Y1 batch of the same size goes with each Y10 batch.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, n_target: int | None = None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size, self.n_target = rank, world_size, n_target
        # never drop everything: a split smaller than one batch gives one short batch
        self.drop_last = drop_last and n // world_size >= batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, n: int, stream: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, stream]).permutation(n)
        else:
            order = np.arange(n)
        if self.world_size > 1:  # equal shares on every rank (wrap around), as DistributedSampler
            per_rank = -(-n // self.world_size) if not self.drop_last else n // self.world_size
            order = np.resize(order, per_rank * self.world_size)[self.rank::self.world_size]
        return order

    def _n_local(self) -> int:
        if self.world_size == 1:
            return self.n
        return -(-self.n // self.world_size) if not self.drop_last else self.n // self.world_size

    def __len__(self) -> int:
        m = self._n_local()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self):
        source = self._order(self.n, 0)
        target = None
        if self.n_target is not None:
            target = self._order(self.n_target, 1)
            if len(target) < len(source):
                target = np.resize(target, len(source))
        for b in range(len(self)):
            idx = source[b * self.batch_size:(b + 1) * self.batch_size]
            if target is None:
                yield idx
            else:
                yield idx, target[b * self.batch_size:b * self.batch_size + len(idx)]


class PrefetchedViews:
    """Builds ``views_of(key)`` for batch keys in one background thread, in the order submitted.

    :meth:`take` returns a submitted key's result (waiting for it), or computes it here when it was not
    submitted; either way the result is ``views_of(key)``, which must depend on the key only.
    """

    def __init__(self, views_of: Callable[[object], tuple]) -> None:
        self.views_of = views_of
        self._executor: ThreadPoolExecutor | None = None
        self._pending: dict[bytes, Future] = {}

    @staticmethod
    def _id(key) -> bytes:
        parts = key if isinstance(key, tuple) else (key,)
        return b"|".join(np.asarray(p, dtype=np.int64).tobytes() for p in parts)

    def reset(self) -> None:
        """Forget pending work (a new epoch); work already running finishes unused."""
        for future in self._pending.values():
            future.cancel()
        self._pending = {}

    def close(self) -> None:
        """Cancel pending work and wait for the running one (the thread ends; a later submit starts another)."""
        self.reset()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit(self, key) -> None:
        """Start building ``key``'s views (once)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="survey-mix")
        ident = self._id(key)
        if ident not in self._pending:
            self._pending[ident] = self._executor.submit(self.views_of, key)

    def take(self, key) -> tuple:
        """``views_of(key)``: the submitted result, or computed now."""
        future = self._pending.pop(self._id(key), None)
        return future.result() if future is not None else self.views_of(key)


class AugmentedBatches(IndexBatches):
    """:class:`IndexBatches` that has ``prefetch`` build each batch's survey-mix views
    :data:`PREFETCH_BATCHES` batches ahead; the keys, and so the batches, are :class:`IndexBatches`'s."""

    def __init__(self, *args, prefetch: PrefetchedViews, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prefetch = prefetch

    def __iter__(self):
        keys = list(super().__iter__())
        self.prefetch.reset()
        for key in keys[:PREFETCH_BATCHES]:
            self.prefetch.submit(key)
        for i, key in enumerate(keys):
            if i + PREFETCH_BATCHES < len(keys):
                self.prefetch.submit(keys[i + PREFETCH_BATCHES])
            yield key


class TensorBatches(Dataset):
    """Indexes in-memory tensors with a whole batch of indices at once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, x_target: torch.Tensor | None = None,
                 pair_target: bool = False, *, raw: np.ndarray | None = None, augmenter: SurveyMix | None = None,
                 seed: int = 0) -> None:
        self.x, self.y, self.x_target, self.pair_target = x, y, x_target, pair_target
        self.raw, self.augmenter, self.seed = raw, augmenter, seed
        self.prefetch = PrefetchedViews(self.views) if augmenter is not None else None

    def __len__(self) -> int:
        return len(self.y)

    @staticmethod
    def _take(t: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        return t[torch.as_tensor(idx, device=t.device)]

    def __getitem__(self, key):
        batch = self._batch(key)
        if self.prefetch is None:
            return batch
        return (*batch, *self.prefetch.take(key))

    def views(self, key) -> tuple[torch.Tensor, ...]:
        """The survey-mix views of the Y10 images of batch ``key``, from a generator seeded by the run's seed
        and the batch's indices (the same for the same key, whichever thread builds them)."""
        idx = np.asarray(key[0] if isinstance(key, tuple) else key)
        rng = np.random.default_rng([self.seed, AUGMENT_STREAM, *(int(i) for i in idx)])
        return self.augmenter(np.asarray(self.raw[idx]), rng)

    def _batch(self, key):
        if isinstance(key, tuple):  # (source indices, independent target indices)
            idx, idx_t = key
            return self._take(self.x, idx), self._take(self.y, idx), self._take(self.x_target, idx_t)
        if self.x_target is not None and self.pair_target:  # same galaxies in both domains
            return self._take(self.x, key), self._take(self.y, key), self._take(self.x_target, key)
        return self._take(self.x, key), self._take(self.y, key)


class GalaxyDataModule(L.LightningDataModule):
    """Stretched Y10 (and Y1) training and validation images held in memory."""

    def __init__(self, data: str | Path | None, config: TrainConfig,
                 tensors: dict[str, torch.Tensor] | None = None, *, raw_train: np.ndarray | None = None,
                 augmenter: SurveyMix | None = None, prefetch_views: bool | None = None) -> None:
        """Args:
            data: the dataset folder (None with ``tensors``).
            config: the run's settings.
            tensors: in-memory model-input tensors instead of ``data`` (benchmarks, notebooks): ``Y10_train``,
                ``y_train``, ``Y10_valid``, ``y_valid`` and, as needed, ``Y1_train``, ``Y1_valid``.
            raw_train, augmenter: with ``tensors`` and ``--augment survey-mix``: the raw Y10 training
                electrons (N, B, H, W), whose model input ``Y10_train`` is, and the augmenter (with the
                normalisation) [default: built from ``data``].
            prefetch_views: build the survey-mix views ahead in a background thread [default: when training
                on a GPU].
        """
        super().__init__()
        self.data_path = Path(data) if data is not None else None
        self.config = config
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self.raw_train, self.augmenter = raw_train, augmenter
        self._prefetch: PrefetchedViews | None = None
        self.prefetch_views = prefetch_views

    def setup(self, stage: str | None = None) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.tensors:  # given in memory (benchmarks, notebooks)
            self.tensors = {k: _to_device(v, device) for k, v in self.tensors.items()}
            if self.config.augment != "none" and (self.augmenter is None or self.raw_train is None):
                raise OptionError(f"--augment {self.config.augment} with in-memory tensors needs raw_train and "
                                  "augmenter")
            return
        ds = load_dataset(self.data_path)
        if self.config.augment == "survey-mix":
            if ds.raw_is_model_input:
                raise OptionError("--augment survey-mix corrupts raw electrons; this dataset stores model input "
                                  "only (imported with --stretch none)")
            self.raw_train = ds.images("Y10", "train", stretched=False)
            self.augmenter = SurveyMix(lambda raw: ds.model_input(raw, "Y10"), domain="Y10", bands=ds.bands)
        want = [("Y10", "train"), ("Y10", "valid")]
        if self.config.uses_target_domain:
            want.append(("Y1", "train"))
        if ds.has_domain("Y1"):
            want.append(("Y1", "valid"))
        for domain, split in want:
            self.tensors[f"{domain}_{split}"] = _to_device(torch.from_numpy(ds.images(domain, split)), device)
        for split in ("train", "valid"):
            self.tensors[f"y_{split}"] = _to_device(torch.from_numpy(ds.labels(split)), device)

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        t, c = self.tensors, self.config
        rank, world = self._rank()
        dataset = TensorBatches(t["Y10_train"], t["y_train"], t.get("Y1_train"), raw=self.raw_train,
                                augmenter=self.augmenter if c.augment != "none" else None, seed=c.seed)
        kwargs = dict(shuffle=True, seed=c.seed, drop_last=True, rank=rank, world_size=world,
                      n_target=len(t["Y1_train"]) if c.uses_target_domain else None)
        ahead = self.prefetch_views
        if ahead is None:
            ahead = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        if dataset.prefetch is not None and ahead:
            if self._prefetch is not None:
                self._prefetch.close()
            self._prefetch = dataset.prefetch
            sampler = AugmentedBatches(len(t["y_train"]), c.batch_size, prefetch=dataset.prefetch, **kwargs)
        else:
            sampler = IndexBatches(len(t["y_train"]), c.batch_size, **kwargs)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)

    def teardown(self, stage: str | None = None) -> None:
        """End the survey-mix thread (views built ahead for steps that will not run are dropped)."""
        if self._prefetch is not None:
            self._prefetch.close()

    def val_dataloader(self) -> DataLoader:
        t, c = self.tensors, self.config
        rank, world = self._rank()
        sampler = IndexBatches(len(t["y_valid"]), c.eval_batch_size, shuffle=False, rank=rank, world_size=world)
        dataset = TensorBatches(t["Y10_valid"], t["y_valid"], t.get("Y1_valid"), pair_target=True)
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and x.device != device:
        free, _ = torch.cuda.mem_get_info(device)
        if x.numel() * x.element_size() < 0.4 * free:
            return x.to(device)
        return x.pin_memory()
    return x
