"""EventLoader: DALI decodes and augments, torch converts to events on the same device and stream.

    loader = EventLoader(ImageFolderSource("/imagenet/train"), 128, train=True)
    for events, labels in loader:          # events [T, B, 2, H, W], labels [B] int64, on the device
        ...

(``i2e_dali.make_loader("/imagenet", "train", 128)`` builds the same with the data set's defaults.)

Stream contract (GPU): DALI's PyTorch iterator hands its GPU outputs to torch on
``torch.cuda.current_stream()`` at ``next()`` — with DALI's dynamic executor as DLPack views whose
readiness is waited for on that stream, with the older executor as a copy queued on it. The
conversion (``i2e_convert``, the fused kernel on CUDA) is queued right after, on the same current
stream, and so is the label lookup. Nothing is copied to the host and nothing synchronises the
device: the yielded tensors are ready *in stream order* on the stream that was current when the
loop asked for the batch. Consume them on that stream (the normal case), or make another stream
``wait_stream`` on it first. ``with torch.cuda.stream(s): for ev, lab in loader:`` works: the
hand-off then happens on ``s``.

Epochs (data/base.py, like torch's DataLoader): every ``iter()`` starts a new epoch; the first ``iter()``
after ``load_state_dict()`` continues the saved position. Each training epoch is its own DALI pipeline,
built from (seed, epoch): the loader draws the epoch's global permutation (numpy, seeded by seed and
epoch, the same on every rank), takes this rank's slice and hands DALI that list (a ``file_list`` text
file for folders, the external-source feed for in-memory sets); DALI's own shuffling is off and its random
crops/flips, like the motion draws, are seeded from (seed, epoch, rank). So an epoch depends only on the
seed and its number, never on how far earlier epochs were read, and abandoning an epoch drops its
pipeline instead of reading it to the end. Training drops the last partial batch (all ranks yield
``len()`` batches); evaluation reads this rank's contiguous range, keeps the last batch trimmed, so every
sample is yielded exactly once across ranks. ``state_dict()`` / ``load_state_dict()`` use DALI's
checkpointing of the current epoch's pipeline (reader position, random crops and flips) plus the
epoch number and the conversion's generator: a restored loader yields exactly the batches the saved one
would have.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping

import numpy as np
import torch

from .base import LoaderBase, batch_type
from .dali_errors import PATH_PATTERNS as _PATH_PATTERNS, is_dali_data_error
from .sources import CifarSource, ImageFolderSource, UndecodableImageError, dali_error_detail
from pipelines import shard_bounds

from ..convert import Conversion, i2e_convert
from ..convert.static import static_frames
from ..errors import ConfigError
from ..placement import DEFAULT_SEED, cores_per_rank, default_shard, resolve_device

__all__ = ["EventLoader", "DaliOptions", "is_dali_data_error", "register_pipeline_builder"]

_STATE_VERSION = 2  # 2: one pipeline per epoch (version 1 states continued DALI's own epoch counter)
# No batch is imported while the iterator is built (DALI's default prepare_first_batch=True would run
# the first hand-off at construction, on whatever stream is current then): every hand-off happens at
# next(), on the stream current at that call, as the stream contract above says.
_ITERATOR_OPTIONS = {"prepare_first_batch": False}




def _default_threads(gpu: bool) -> int:
    per_rank = cores_per_rank()
    # A GPU pipeline only needs CPU threads for reading and the decoder's host stage.
    return min(per_rank, 8) if gpu else per_rank


@dataclass(frozen=True)
class DaliOptions:
    """DALI's knobs, grouped: none of them changes what a batch holds, only how fast it comes.

    decode: "auto" (GPU when the loader's device is CUDA), "gpu" ("mixed" decoder + GPU ops) or "cpu".
    num_threads: DALI CPU threads (None: this rank's share of the cores; at most 8 with GPU decode).
    prefetch_queue_depth, hw_decoder_load: see pipelines/folder.py.
    extra: further fields of ``FolderPipelineConfig`` / ``CifarPipelineConfig`` (e.g.
        ``{"preallocate_width_hint": 0, "dont_use_mmap": True}``).
    """

    decode: str = "auto"
    num_threads: int | None = None
    prefetch_queue_depth: int = 2
    hw_decoder_load: float = 0.65
    extra: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if self.decode not in ("auto", "gpu", "cpu"):
            raise ConfigError(f"dali.decode must be 'auto', 'gpu' or 'cpu', got {self.decode!r}")
        for name in ("num_threads", "prefetch_queue_depth"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"dali.{name} must be a positive int, got {v!r}")
        if not isinstance(self.extra, Mapping):
            raise ConfigError(f"dali.extra must be a dict of pipeline options, got {type(self.extra).__name__}")


def _epoch_seed(seed: int, epoch: int, shard: int, stream: int) -> int:
    """A seed for one random stream (0: DALI's ops, 1: the motion draws) of one epoch on one rank."""
    return int(np.random.SeedSequence([seed, epoch, shard, stream]).generate_state(1)[0] & 0x7FFF_FFFF)


# ------------------------------------------------------------------------------------------------------
# One pipeline builder per source kind: ``builder(loader, epoch, dali_seed, checkpoint) -> (pipe,
# iterator keyword arguments)``; the pipeline yields ("images" uint8 [B, 3, H, W], "ids" sample indices).
# ------------------------------------------------------------------------------------------------------
_BUILDERS: dict[str, Callable] = {}


def register_pipeline_builder(kind: str, builder: Callable) -> None:
    """Serve sources whose ``kind`` is ``kind`` with ``builder`` (see above)."""
    _BUILDERS[kind] = builder


def _folder_pipeline(loader: "EventLoader", epoch: int, seed: int, checkpoint: str | None):
    from nvidia.dali.plugin.pytorch import LastBatchPolicy
    from pipelines.folder import READER_NAME, FolderPipelineConfig, build_folder_pipeline

    path, root = loader._write_file_list(epoch)
    cfg = FolderPipelineConfig(
        train=loader.train, batch_size=loader.batch_size, crop_size=loader.crop_size,
        resize_size=loader.resize_size, eval_view=loader.eval_view, device_id=loader._device_id(),
        num_threads=loader.num_threads, seed=seed, shuffle=False,  # the list is this epoch's order
        prefetch_queue_depth=loader.dali.prefetch_queue_depth, hw_decoder_load=loader.dali.hw_decoder_load,
        cpu_ops=loader.decode == "cpu", train_view="resize" if loader.aug == "baseline1" else "random-resized-crop",
        max_pixels=loader.max_pixels,
    )
    loader._apply_options(cfg)
    pipe = build_folder_pipeline(None, None, cfg, checkpoint, file_list=path, file_root=root)
    policy = LastBatchPolicy.DROP if loader.train else LastBatchPolicy.PARTIAL
    # "max_pixels" is the loader's (see _open), not the iterator's
    return pipe, {"reader_name": READER_NAME, "last_batch_policy": policy, "max_pixels": cfg.max_pixels}


def _cifar_pipeline(loader: "EventLoader", epoch: int, seed: int, checkpoint: str | None):
    from pipelines.cifar import CifarFeed, CifarPipelineConfig, build_cifar_pipeline

    feed = CifarFeed(loader.source.images, loader.batch_size, train=loader.train, shard_id=loader.shard_id,
                     num_shards=loader.num_shards, seed=loader.seed, epoch=epoch)
    cfg = CifarPipelineConfig(
        train=loader.train, batch_size=loader.batch_size, out_size=loader.out_size, device_id=loader._device_id(),
        num_threads=loader.num_threads, seed=seed, prefetch_queue_depth=loader.dali.prefetch_queue_depth,
        cpu_ops=loader.decode == "cpu", **({"pad": 0} if loader.aug == "baseline1" else {}),  # Baseline-I
    )
    loader._apply_options(cfg)
    # No reader: the feed ends the epoch with StopIteration and sizes the last batch itself.
    return build_cifar_pipeline(feed, cfg, checkpoint), {}


register_pipeline_builder("folder", _folder_pipeline)
register_pipeline_builder("cifar", _cifar_pipeline)  # CIFAR batches and MNIST's IDX files (in-memory uint8)


def _wds_pipeline(loader: "EventLoader", epoch: int, seed: int, checkpoint: str | None):
    from .shards import shard_pipeline  # WebDataset tar shards: per-epoch DALI index files, the folder views

    return shard_pipeline(loader, epoch, seed, checkpoint)


register_pipeline_builder("wds", _wds_pipeline)


def _write_file_list(source, path: str, indices: np.ndarray) -> str | None:
    """Write DALI's file list ("path sample-index" lines) for ``indices``; returns its ``file_root``."""
    own = getattr(source, "write_file_list", None)
    if own is not None:  # compact sources write relative to their root (which may be an s3:// URL)
        own(path, indices)
        return str(source.root)
    samples = source.samples
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.writelines(f"{samples[i][0]} {i}\n" for i in indices.tolist())
    return None  # absolute paths


class EventLoader(LoaderBase):
    """Iterate ``Batch(events [T,B,2,H,W], labels [B] int64)`` (see ``with_index`` / ``mix``).

    Args:
        source: a source of kind "folder" or "cifar" (what ``open_source`` returns), or one whose kind
            has a registered pipeline builder.
        batch_size: images per batch on this rank.
        train: training views + random motions, shuffled, last partial batch dropped; else the
            evaluation view, file order, every sample exactly once across ranks.
        conversion: a ``Conversion`` or an ``I2E`` module (None: the defaults; ``ratio=None`` takes the
            source's default, 0.12 ImageNet, 0.07 CIFAR). ``output="images"`` yields the decoded,
            augmented uint8 images ``[B, 3, H, W]`` instead of events.
        dali: ``DaliOptions`` (decode, threads, prefetch, hardware decoder share, pipeline fields).
        device: "auto" (this process's CUDA device if any: LOCAL_RANK under torchrun), "cpu", "cuda[:i]".
        shard_id, num_shards: this rank's shard; default (rank, world) under torch.distributed.
        seed: the epochs' permutations, DALI's random crops/flips and the motion draws.
        with_index: also yield int64 indices into ``source.samples`` (which file each map came from).
        mix: training only: ``mix(images [B,3,H,W] uint8, labels) -> (images, soft_targets | None)``
            applied to the augmented images BEFORE conversion, on the same stream.
        aug: training view, "baseline2" (the paper's default: random-resized-crop, CIFAR pad-4 crop +
            resize) or "baseline1" (the paper's Baseline-I: the fixed resize view + flip).
        eval_view: folder evaluation view, "crop" (resize 256 + centre crop 224) or "resize"
            (straight to crop_size x crop_size, the authors' train-set export view).
        crop_size, resize_size: folder view sizes (default 224 / 256); out_size: CIFAR (default 128).

    Yields ``Batch(events, labels)``; ``IndexedBatch(events, labels, indices)`` with ``with_index``;
    ``MixedBatch(events, labels, soft_targets)`` with ``mix`` (``MixedIndexedBatch`` with both).
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        train: bool,
        conversion: Conversion | None = None,
        dali: DaliOptions | None = None,
        device: str | torch.device = "auto",
        shard_id: int | None = None,
        num_shards: int | None = None,
        seed: int = DEFAULT_SEED,
        with_index: bool = False,
        mix=None,
        aug: str = "baseline2",
        eval_view: str = "crop",
        crop_size: int | None = None,
        resize_size: int | None = None,
        out_size: int | None = None,
    ):
        if aug not in ("baseline1", "baseline2"):
            raise ConfigError(f"aug must be 'baseline1' or 'baseline2', got {aug!r}")
        if eval_view not in ("crop", "resize"):
            raise ConfigError(f"eval_view must be 'crop' or 'resize', got {eval_view!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ConfigError(f"seed must be an int, got {seed!r}")
        kind = getattr(source, "kind", None)
        if kind not in _BUILDERS:
            raise ConfigError(
                f"source must be an ImageFolderSource or CifarSource (see i2e_dali.data.sources.open_source) "
                f"or a source kind in {sorted(_BUILDERS)}, got {type(source).__name__}"
            )
        if mix is not None and not callable(mix):
            raise ConfigError(f"mix must be a callable mix(images, labels) -> (images, soft), got {type(mix).__name__}")
        if dali is None:
            dali = DaliOptions()
        elif not isinstance(dali, DaliOptions):
            raise ConfigError(f"dali must be an i2e_dali.DaliOptions, got {type(dali).__name__}")
        self.conversion = Conversion.coerce(conversion)
        self.dali = dali
        self.aug, self.eval_view = aug, eval_view
        self.source, self.kind = source, kind
        self.batch_size = batch_size
        self.train = bool(train)
        self.mix = mix if self.train else None
        self.with_index = bool(with_index)
        self.batch_type = batch_type(self.with_index, self.mix is not None)
        self.seed = int(seed)
        conv = self.conversion
        self.ratio = float(source.default_ratio if conv.ratio is None else conv.ratio)
        self.timesteps, self.order, self.dtype = conv.timesteps, conv.order, conv.dtype
        self.device = resolve_device(device)
        decode = dali.decode
        if decode == "auto":
            decode = "gpu" if self.device.type == "cuda" else "cpu"
        if decode == "gpu" and self.device.type != "cuda":
            raise ConfigError("dali.decode='gpu' needs a CUDA device; pass device='cuda' or decode='cpu'")
        self.decode = decode
        self.shard_id, self.num_shards = default_shard(shard_id, num_shards)
        self.num_threads = dali.num_threads if dali.num_threads is not None else _default_threads(decode == "gpu")

        self.class_names: list[str] = list(source.classes)
        self.num_classes = len(self.class_names)
        if kind in ("folder", "wds"):  # encoded images: the ImageNet views
            from .decode_check import default_max_pixels

            # The declared-size guard in the graph (pipelines/folder.py; 0 = off): $I2E_DALI_MAX_PIXELS or
            # PIL's limit, as i2e-check and --skip-bad; dali.extra={"max_pixels": N} overrides it.
            self.max_pixels = default_max_pixels() or 0
            self.crop_size = int(crop_size or source.default_crop_size)
            self.resize_size = int(resize_size or source.default_resize_size)
            self.image_size = (self.crop_size, self.crop_size)
        else:
            self.out_size = int(out_size or source.default_out_size)
            self.image_size = (self.out_size, self.out_size)

        labels = getattr(source, "label_array", None)
        if labels is None:
            labels = np.fromiter((lab for _, lab in source.samples), dtype=np.int64, count=len(source.samples))
        self.total_samples = n = len(labels)
        self._labels = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=self.device)
        s = self.num_shards
        if self.train:
            shard = n // s  # equal shards; <= s-1 samples of each epoch's permutation left out
            self._batches_per_epoch = shard // batch_size
            if self._batches_per_epoch == 0:
                raise ConfigError(
                    f"batch_size {batch_size} is larger than this rank's share of the training set "
                    f"({shard} of {n} images over {s} shard(s)); lower the batch size"
                )
            self.num_samples = self._batches_per_epoch * batch_size
        else:
            self._eval_range = shard_bounds(n, self.shard_id, s)
            self.num_samples = self._eval_range[1] - self._eval_range[0]
            self._batches_per_epoch = math.ceil(self.num_samples / batch_size)

        self._generator = torch.Generator(device=self.device) if self.train else None
        self._iterator = None
        self._guard = 0  # the current pipeline's pixel limit (0: no "declared" output)
        self._fresh = False  # the pipeline has not handed out a batch of its epoch yet
        self._pipe_epoch = -1
        self._pass = 0  # id of the current pass: an older pass's generator stops instead of reading on
        self._tmp: str | None = None
        # Built now, so a bad file list or option fails here, and DALI starts prefetching epoch 0.
        self._open(0, None)

    # ----------------------------------------------------------------------------------------------
    # the DALI side: one pipeline per epoch
    # ----------------------------------------------------------------------------------------------
    def _device_id(self) -> int | None:
        # A CUDA consumer always gets a GPU pipeline; decode="cpu" keeps its operators on the CPU
        # (cpu_ops) and DALI moves the finished batch with .gpu(), overlapping the copy with training.
        return self.device.index if self.device.type == "cuda" else None

    def _epoch_indices(self, epoch: int) -> np.ndarray:
        """The samples this rank reads in ``epoch``, in order."""
        if not self.train:
            return np.arange(*self._eval_range, dtype=np.int64)
        # One global permutation per epoch, the same on every rank; rank r takes the r-th equal slice.
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.total_samples)
        start = self.shard_id * (self.total_samples // self.num_shards)
        return perm[start:start + self.num_samples]

    def _write_file_list(self, epoch: int) -> tuple[str, str | None]:
        if self._tmp is None:  # private, removed with the loader
            self._tmp = tempfile.mkdtemp(prefix="i2e-filelist-")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)
        path = f"{self._tmp}/epoch.txt"  # DALI reads it while the pipeline is built; one file suffices
        return path, _write_file_list(self.source, path, self._epoch_indices(epoch))

    def _open(self, epoch: int, checkpoint: str | None) -> None:
        """Build ``epoch``'s pipeline (restored from ``checkpoint`` when given) and seed its motion draws."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self._close()
        if self._batches_per_epoch == 0:  # an empty evaluation shard (more ranks than samples)
            return
        seed = _epoch_seed(self.seed, epoch if self.train else 0, self.shard_id, 0)
        pipe, kw = _BUILDERS[self.kind](self, epoch, seed, checkpoint)
        self._guard = kw.pop("max_pixels", 0)  # the graph has a third output, "declared" (pipelines/folder.py)
        names = ["images", "ids"] + (["declared"] if self._guard else [])
        make = lambda: DALIGenericIterator(pipe, names, auto_reset=False, **_ITERATOR_OPTIONS, **kw)  # noqa: E731
        try:  # a saved DALI state restores only into the same graph: not a data error, no culprit search
            self._iterator = make() if checkpoint is not None else self._dali_call(make)
        except RuntimeError as exc:
            raise ConfigError(f"load_state_dict: the saved DALI state does not fit this loader's pipeline (saved "
                              f"with other view, decode or pixel-limit settings?): {dali_error_detail(str(exc))}") from exc
        if self._generator is not None:
            self._generator.manual_seed(_epoch_seed(self.seed, epoch, self.shard_id, 1))
        self._pipe_epoch, self._fresh = epoch, True

    def _close(self) -> None:
        # Dropping the iterator releases the pipeline: the rest of its epoch is never read.
        self._iterator, self._fresh = None, False

    def _apply_options(self, cfg) -> None:
        fixed = {"train", "batch_size", "device_id", "shard_id", "num_shards", "seed", "shuffle"}  # the loader's
        for key, value in self.dali.extra.items():
            if key in fixed or not hasattr(cfg, key):
                raise ConfigError(f"dali.extra: {key!r} is not a settable option of {type(cfg).__name__}")
            setattr(cfg, key, value)

    def _dali_call(self, fn):
        """Run a DALI call; turn data errors (undecodable/unreadable files) into a project error."""
        try:
            return fn()
        except StopIteration:
            raise
        except RuntimeError as exc:
            msg = str(exc)
            low = msg.lower()
            if "out of memory" in low:
                raise RuntimeError(
                    f"DALI ran out of memory (batch_size={self.batch_size}, prefetch_queue_depth="
                    f"{self.dali.prefetch_queue_depth}); lower the batch size or the prefetch depth.\n{msg}"
                ) from exc
            err = self._data_error(msg)
            if err is None:
                raise  # CUDA / driver / memory, or no file to blame: DALI's own error
            raise err from exc

    def _data_error(self, msg: str) -> UndecodableImageError | None:
        """The project's error naming the file(s) behind a DALI error, found by decode_check's isolated
        culprit search whatever DALI's message says; None: the error passes through as itself."""
        from .decode_check import loader_error

        if hasattr(self.source, "data_error"):  # sources that know their files better (tar shards)
            return self.source.data_error(msg)
        return loader_error(msg, self._suspect_files() if self.kind == "folder" else None,
                            root=getattr(self.source, "root", ""), num_threads=min(self.num_threads, 8))

    def _refuse_oversized(self, declared: torch.Tensor, ids: torch.Tensor) -> None:
        """Raise naming the samples of this batch whose header declares more pixels than the limit: the graph
        decoded a placeholder in their place. ``declared`` is a CPU output, so no device sync here; the ids
        (maybe on the device) are read only when there is something to refuse."""
        d = declared.numpy().reshape(-1, 3)
        over = np.flatnonzero(d[:, 0] * d[:, 1] > self._guard)
        if over.size:
            from .decode_check import oversized_error

            src, rows = self.source, ids.reshape(-1).cpu().numpy()[over].tolist()
            if self.kind == "wds":
                names = [f"tar shard {src.shard_path(i)} (member {src.member_name(i)})" for i in rows]
            else:
                names = [src.path(i) if hasattr(src, "path") else src.samples[i][0] for i in rows]
            raise oversized_error([(n, *d[k, :2].tolist()) for n, k in zip(names, over)], self._guard,
                                  root=str(getattr(src, "root", "")), shards=self.kind == "wds")

    def _suspect_files(self) -> list[str]:
        """The files DALI can have been reading when it failed: this epoch's next batches up to the prefetch
        depth (+1 in flight). Not the whole share: the search decodes all it is given (ImageNet: hours)."""
        order = self._epoch_indices(self._pipe_epoch)
        lo = self.position * self.batch_size if self._pipe_epoch == self.epoch else 0
        lo = lo if lo < len(order) else 0  # an evaluation epoch being rewound reads from its start
        return [self.source.path(int(i)) for i in order[lo:lo + (self.dali.prefetch_queue_depth + 2) * self.batch_size]]

    # ----------------------------------------------------------------------------------------------
    # iteration
    # ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self._new_iterator()
        self._pass += 1
        return self._run(self._pass)

    def _run(self, token: int):
        # The epoch starts at the first batch asked for, not at iter(): an iterator made and dropped unread
        # (Lightning's "is it iterable" check) starts none.
        if token != self._pass:  # a newer iter() (or reset) came first: this pass was abandoned unread
            return
        if not self._next_pass():
            # A fresh pipeline of this epoch is used as it is (built ahead, or at construction); an
            # evaluation pipeline that ran to its end was rewound by DALI and reads the same list again.
            if not (self._fresh and (self._pipe_epoch == self.epoch or not self.train)):
                self._open(self.epoch, None)
        iterator = self._iterator
        if iterator is None:  # an empty evaluation shard
            return
        self._fresh = False
        while token == self._pass:  # a newer iter() took over: this pass was abandoned
            try:
                out = self._dali_call(lambda: next(iterator))
            except StopIteration:
                if token == self._pass:
                    self._end_epoch()
                return
            images, ids = out[0]["images"], out[0]["ids"]
            if images.shape[0] == 0:
                continue
            if self._guard:
                self._refuse_oversized(out[0]["declared"], ids)
            self.position += 1
            yield self._convert(images, ids)

    def _end_epoch(self) -> None:
        if self.train:
            # Build the next epoch's pipeline now: DALI starts reading it while the trainer evaluates,
            # so the epoch boundary does not wait for a pipeline start-up (one pipeline at a time: the
            # finished one is dropped first). If the run ends here the build was wasted; it is one start-up.
            self._open(self.epoch + 1, None)
        else:
            self._dali_call(self._iterator.reset)  # rewind: evaluation reads the same list every epoch
            self._fresh = True

    def _convert(self, images: torch.Tensor, ids: torch.Tensor):
        # Everything below is queued on torch's current stream, right behind DALI's hand-off.
        if images.device != self.device:  # safety net: the graphs built here already deliver on self.device
            images = images.to(self.device, non_blocking=True)
            ids = ids.to(self.device, non_blocking=True)
        ids = ids.reshape(-1).to(torch.int64)
        labels = self._labels[ids]
        soft = None
        if self.mix is not None:  # mixing on the images, before conversion (see training/mixing.py)
            images, soft = self.mix(images, labels)  # uint8 in; float 0..1 out where it mixed
        conv = self.conversion
        if conv.output == "images":
            events = images
        elif conv.output != "events":
            events = static_frames(images, kind=conv.output, timesteps=len(self.order), dtype=self.dtype)
        else:
            events = i2e_convert(
                images, ratio=self.ratio, timesteps=self.timesteps, order=self.order,
                train=self.train and conv.random_motion, per_sample=conv.per_sample, generator=self._generator,
                dtype=self.dtype, impl=conv.impl, validate=False, threshold=conv.threshold,
                threshold_value=conv.threshold_value,
            )
        fields = (events, labels) + ((soft,) if self.mix is not None else ()) + ((ids,) if self.with_index else ())
        return self.batch_type(*fields)

    def reset(self) -> None:
        """Abandon the rest of the current epoch now (its pipeline is dropped, nothing more is read);
        the next ``iter()`` starts the next epoch, as it would anyway."""
        self._resume = False
        self._pending = self._started  # a saved state now describes the next epoch's start
        if self._iterator is not None and not self._fresh:
            self._close()
        self._pass += 1

    # ----------------------------------------------------------------------------------------------
    # exact resume
    # ----------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        return {
            "kind": self.kind, "train": self.train, "total_samples": self.total_samples,
            "batch_size": self.batch_size, "shard_id": self.shard_id, "num_shards": self.num_shards,
            "seed": self.seed, "image_size": list(self.image_size), "pixel_guard": self._guard_on(),
        }

    def _guard_on(self) -> bool:  # the guard adds ops to the graph: a DALI state restores only with the same
        return int(self.dali.extra.get("max_pixels", getattr(self, "max_pixels", 0)) or 0) > 0

    def state_dict(self) -> dict:
        """Position and random state; ``torch.save`` / ``torch.load(weights_only=True)`` friendly."""
        epoch, done = self._saved_position()
        mid = done > 0 and self._iterator is not None
        return {
            "version": _STATE_VERSION, "epoch": epoch, "consumed": done, **self._fingerprint(),
            "dali": self._iterator.checkpoints()[0] if mid else None,
            "generator": self._generator.get_state() if mid and self._generator is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Make the next ``iter()`` continue exactly where the loader that produced ``state`` stood (same
        data set, batch size, shard and seed). Rebuilds that epoch's DALI pipeline from its checkpoint."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ConfigError("load_state_dict: not an EventLoader state (or from another version of i2e-dali)")
        self._check_fingerprint({k: state.get(k) for k in self._fingerprint()})
        epoch, done = int(state["epoch"]), int(state["consumed"])
        if not 0 <= done < max(self._batches_per_epoch, 1):
            raise ConfigError(f"load_state_dict: position {done} is outside 0..{self._batches_per_epoch - 1}")
        mid = done > 0 and state.get("dali") is not None
        self._open(epoch, state["dali"] if mid else None)
        if mid and self._generator is not None and state.get("generator") is not None:
            self._generator.set_state(state["generator"])
        self.epoch, self.position = epoch, done if mid else 0
        self._started, self._resume, self._pending = False, mid, False
        self._pass += 1

    def __repr__(self) -> str:
        return (
            f"EventLoader({self.source!r}, batch_size={self.batch_size}, train={self.train}, "
            f"device={self.device}, decode={self.decode}, shard={self.shard_id}/{self.num_shards}, "
            f"image_size={self.image_size}, T={len(self.order)}, ratio={self.ratio})"
        )
