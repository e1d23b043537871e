"""EventLoader: DALI decodes and augments, torch converts to events on the same device and stream.

    loader = EventLoader(ImageFolderSource("/imagenet/train"), 128, train=True)
    for events, labels in loader:          # events [T, B, 2, H, W], labels [B] int64, on the device
        ...

Stream contract (GPU): DALI's PyTorch iterator hands its GPU outputs to torch on
``torch.cuda.current_stream()`` at ``next()`` — with DALI's dynamic executor as DLPack views whose
readiness is waited for on that stream, with the older executor as a copy queued on it. The
conversion (``i2e_convert``, the fused kernel on CUDA) is queued right after, on the same current
stream, and so is the label lookup. Nothing is copied to the host and nothing synchronises the
device: the yielded tensors are ready *in stream order* on the stream that was current when the
loop asked for the batch. Consume them on that stream (the normal case), or make another stream
``wait_stream`` on it first. ``with torch.cuda.stream(s): for ev, lab in loader:`` works: the
hand-off then happens on ``s``.

Epochs: one pass over the loader is one epoch; training reshuffles every epoch (a fresh global
permutation shared by all shards) and drops the last partial batch (all ranks yield ``len()``
batches); evaluation keeps the last batch, trimmed, so every sample of the data set is yielded
exactly once across all ranks. Breaking out of a pass and iterating again continues the same epoch
(DALI cannot rewind); ``reset()`` abandons the rest of the epoch. ``state_dict()`` /
``load_state_dict()`` use DALI's checkpointing (reader position, random crops and flips) plus the
conversion's generator, so a restored loader yields exactly the batches the saved one would have.
"""
from __future__ import annotations

import math
import re
from typing import Iterator, Sequence

import numpy as np
import torch

from .base import LoaderBase
from .sources import CifarSource, ImageFolderSource, UndecodableImageError, dali_error_detail
from pipelines import shard_bounds

from ..convert import i2e_convert, parse_order
from ..convert.spec import check_threshold
from ..convert.static import static_frames
from ..placement import DEFAULT_SEED, cores_per_rank, default_shard, resolve_device

__all__ = ["EventLoader", "is_dali_data_error"]

_STATE_VERSION = 1
# No batch is imported while the iterator is built (DALI's default prepare_first_batch=True would run
# the first hand-off at construction, on whatever stream is current then): every hand-off happens at
# next(), on the stream current at that call, as the stream contract above says.
_ITERATOR_OPTIONS = {"prepare_first_batch": False}


def _default_threads(gpu: bool) -> int:
    per_rank = cores_per_rank()
    # A GPU pipeline only needs CPU threads for reading and the decoder's host stage.
    return min(per_rank, 8) if gpu else per_rank


# DALI names the failing sample's source in some errors ("Failed to decode sample #3 : /x/y.JPEG",
# "File mapping failed: /x/y.JPEG"), not in all (e.g. "nvImageCodec failure: '#4'").
_PATH_PATTERNS = (
    re.compile(r"sample #\d+\s*:\s*(\S+)"),
    re.compile(r"(?:File mapping failed|Failed to open file|Could not open file)\s*:?\s*(\S+)"),
)
# Phrases of errors about the data itself. nvImageCodec reports statuses by number (nvimgcodec.h):
# 3/13 bad code stream, 4/14 code stream unsupported, 19 incomplete bit stream are the file's fault;
# the others (allocator, execution, arch mismatch, internal, CUDA call errors) are the machine's.
_DALI_DATA_PHRASES = ("failed to decode sample", "premature end", "invalid marker", "not a jpeg",
                      "file mapping failed", "failed to open file", "could not open file",
                      "nvjpeg_status_bad_jpeg", "nvjpeg_status_jpeg_not_supported")
_NVIMGCODEC_DATA_STATUS = {3, 4, 13, 14, 19}
_NVIMGCODEC_STATUS = re.compile(r"nvimagecodec failure: '#(\d+)'")
# CUDA / driver / nvJPEG infrastructure failures: never a bad image, even when the decoder reports them.
_INFRA_PHRASES = ("cuda", "driver", "out of memory", "illegal memory", "illegal address", "launch failure",
                  "nvjpeg_status_execution_failed", "nvjpeg_status_internal_error",
                  "nvjpeg_status_allocator_failure", "nvjpeg_status_arch_mismatch", "ecc error")


def is_dali_data_error(message: str) -> bool:
    """True when a DALI error is about a sample (unreadable or undecodable file), False when it is a
    CUDA, driver or decoder-infrastructure failure (those pass through unchanged: a culprit search over
    the data set would only hide them). Only the part after DALI's "encountered:" is read, with the
    sample paths removed, so an operator traceback or a folder named "cuda" cannot misclassify it."""
    text = str(message)
    low = text.lower()
    detail = low.split("encountered:", 1)[1] if "encountered:" in low else low
    for pat in _PATH_PATTERNS:
        detail = pat.sub(" ", detail)
    if any(k in detail for k in _INFRA_PHRASES):
        return False
    codes = {int(c) for c in _NVIMGCODEC_STATUS.findall(detail)}
    if codes:
        return codes <= _NVIMGCODEC_DATA_STATUS
    return any(k in low for k in _DALI_DATA_PHRASES)


class EventLoader(LoaderBase):
    """Iterate ``(events [T,B,2,H,W], labels [B] int64)`` (plus ``indices [B]`` with ``with_index``).

    Args:
        source: ``ImageFolderSource`` / ``CifarSource`` (or what ``open_source`` returns).
        batch_size: images per batch on this rank.
        train: training views + random motions, shuffled, last partial batch dropped; else the
            evaluation view, file order, every sample exactly once across ranks.
        ratio: threshold ratio; None = the source's default (0.12 ImageNet, 0.07 CIFAR).
        timesteps, order, per_sample, dtype, impl: passed to ``i2e_convert``.
        device: "auto" (CUDA if available), "cpu", "cuda[:i]": where events and labels live.
        decode: "auto" (GPU when ``device`` is CUDA), "gpu" ("mixed" decoder + GPU ops) or "cpu".
        shard_id, num_shards: this rank's shard; default (rank, world) under torch.distributed.
        seed: reader permutation, DALI's random crops/flips (per shard) and the motion draws.
        num_threads: DALI CPU threads (default: this rank's share of the cores; at most 8 with GPU decode).
        with_index: also yield int64 indices into ``source.samples`` (which file each map came from).
        eval_view: folder evaluation view, "crop" (resize 256 + centre crop 224) or "resize"
            (straight to crop_size x crop_size, the authors' train-set export view).
        crop_size, resize_size: folder view sizes (default 224 / 256); out_size: CIFAR (default 128).
        prefetch_queue_depth, hw_decoder_load: DALI throughput knobs (see pipelines/folder.py).
        convert: False yields the decoded, augmented uint8 images ``[B, 3, H, W]`` in place of events
            (calibration converts one sample many times); the stream contract is the same.
        pipeline_options: further fields of ``FolderPipelineConfig`` / ``CifarPipelineConfig``
            (e.g. ``{"preallocate_width_hint": 0, "dont_use_mmap": True}``).
        aug: training view, "baseline2" (the paper's default: random-resized-crop, CIFAR pad-4 crop +
            resize) or "baseline1" (the paper's Baseline-I: the fixed resize view + flip).
        random_motion: False trains on the canonical motions (the paper's Table 4 "baseline-I").
        threshold, threshold_value: "adaptive" (ratio x range) or "fixed" with an absolute value.
        output: "events" (I2E), or the static "rgb" image / its "v" map repeated T times ([T,B,3|1,H,W]).
        mix: training only: ``mix(images [B,3,H,W] uint8, labels) -> (images, soft_targets | None)``
            applied to the augmented images BEFORE conversion, on the same stream; the loader then
            yields ``(events, labels, soft_targets)`` (labels stay the true ones).
    """

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        train: bool,
        ratio: float | None = None,
        timesteps: int = 8,
        order: Sequence[int] | str | None = None,
        per_sample: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "auto",
        shard_id: int | None = None,
        num_shards: int | None = None,
        seed: int = DEFAULT_SEED,
        num_threads: int | None = None,
        with_index: bool = False,
        eval_view: str = "crop",
        crop_size: int | None = None,
        resize_size: int | None = None,
        out_size: int | None = None,
        decode: str = "auto",
        prefetch_queue_depth: int = 2,
        hw_decoder_load: float = 0.65,
        impl: str = "auto",
        pipeline_options: dict | None = None,
        convert: bool = True,
        aug: str = "baseline2",
        random_motion: bool = True,
        threshold: str = "adaptive",
        threshold_value: float | None = None,
        output: str = "events",
        mix=None,
    ):
        if aug not in ("baseline1", "baseline2"):
            raise ValueError(f"aug must be 'baseline1' or 'baseline2', got {aug!r}")
        if output not in ("events", "rgb", "v"):
            raise ValueError(f"output must be 'events', 'rgb' or 'v', got {output!r}")
        self.aug, self.random_motion, self.output = aug, bool(random_motion), output
        self.threshold, self.threshold_value = threshold, threshold_value
        check_threshold(threshold, threshold_value)  # fail before DALI starts
        self.mix = mix if train else None
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        # folder sources go through the folder graph; in-memory uint8 arrays (kind "cifar": CIFAR, MNIST's
        # IDX files) through the CIFAR graph
        if not isinstance(source, (ImageFolderSource, CifarSource)) and getattr(source, "kind", None) != "cifar":
            raise TypeError(
                f"source must be an ImageFolderSource or CifarSource (see i2e_dali.datasets.open_source), "
                f"got {type(source).__name__}"
            )
        if eval_view not in ("crop", "resize"):
            raise ValueError(f"eval_view must be 'crop' or 'resize', got {eval_view!r}")
        self.source = source
        self.batch_size = batch_size
        self.train = bool(train)
        self.ratio = float(source.default_ratio if ratio is None else ratio)
        self.timesteps = timesteps
        self.order = parse_order(order, timesteps)  # validates early, before DALI starts
        self.per_sample = per_sample
        self.dtype = dtype
        self.impl = impl
        self.with_index = bool(with_index)
        self.convert = bool(convert)
        self.eval_view = eval_view
        self.seed = int(seed)
        self.device = resolve_device(device)
        if decode == "auto":
            decode = "gpu" if self.device.type == "cuda" else "cpu"
        if decode not in ("gpu", "cpu"):
            raise ValueError(f"decode must be 'auto', 'gpu' or 'cpu', got {decode!r}")
        if decode == "gpu" and self.device.type != "cuda":
            raise ValueError("decode='gpu' needs a CUDA device; pass device='cuda' or decode='cpu'")
        self.decode = decode
        self.shard_id, self.num_shards = default_shard(shard_id, num_shards)
        self.num_threads = int(num_threads) if num_threads is not None else _default_threads(decode == "gpu")
        self.prefetch_queue_depth = int(prefetch_queue_depth)
        self.hw_decoder_load = float(hw_decoder_load)
        self.pipeline_options = dict(pipeline_options or {})

        self.class_names: list[str] = list(source.classes)
        self.num_classes = len(self.class_names)
        self.total_samples = len(source.samples)
        self.kind = source.kind
        if self.kind == "folder":
            self.crop_size = int(crop_size or source.default_crop_size)
            self.resize_size = int(resize_size or source.default_resize_size)
            self.image_size = (self.crop_size, self.crop_size)
        else:
            self.out_size = int(out_size or source.default_out_size)
            self.image_size = (self.out_size, self.out_size)

        # Which samples this rank reads, in the order handed to DALI.
        n, s = self.total_samples, self.num_shards
        if self.train:
            shard = n // s  # equal shards (DALI's per-epoch shuffle needs them); <= s-1 samples left out
            self._batches_per_epoch = shard // batch_size
            if self._batches_per_epoch == 0:
                raise ValueError(
                    f"batch_size {batch_size} is larger than this rank's share of the training set "
                    f"({shard} of {n} images over {s} shard(s)); lower the batch size"
                )
            self.num_samples = self._batches_per_epoch * batch_size
        else:
            lo, hi = shard_bounds(n, self.shard_id, s)
            self._eval_range = (lo, hi)
            self.num_samples = hi - lo
            self._batches_per_epoch = math.ceil(self.num_samples / batch_size)

        self._labels = torch.as_tensor([lab for _, lab in source.samples], dtype=torch.int64, device=self.device)
        self._generator = None
        if self.train:
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.seed * 1000 + self.shard_id)
        self.epoch = 0
        self._consumed = 0  # batches of the current epoch handed out
        self._iterator = None
        self._pipe = None
        if self._batches_per_epoch > 0:
            self._build(checkpoint=None)

    # ----------------------------------------------------------------------------------------------
    # building the DALI side
    # ----------------------------------------------------------------------------------------------
    def _device_id(self) -> int | None:
        # A CUDA consumer always gets a GPU pipeline; decode="cpu" keeps its operators on the CPU
        # (cpu_ops) and DALI moves the finished batch with .gpu(), overlapping the copy with training.
        return self.device.index if self.device.type == "cuda" else None

    def _build(self, checkpoint: str | None) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self._iterator = None
        self._pipe = None
        if self.kind == "folder":
            from pipelines.folder import READER_NAME, FolderPipelineConfig, build_folder_pipeline

            files = self.source.files
            if self.train:
                # Seeded base order (DALI's per-epoch shuffle is seeded by the epoch only), trimmed
                # to equal shards; DALI shards this list.
                order = np.random.default_rng(self.seed).permutation(self.total_samples)
                order = order[: (self.total_samples // self.num_shards) * self.num_shards]
                shard_id, num_shards = self.shard_id, self.num_shards
            else:
                # Each rank reads exactly its own contiguous range; no padding reaches the user.
                order = np.arange(*self._eval_range)
                shard_id, num_shards = 0, 1
            cfg = FolderPipelineConfig(
                train=self.train, batch_size=self.batch_size, crop_size=self.crop_size,
                resize_size=self.resize_size, eval_view=self.eval_view, device_id=self._device_id(),
                num_threads=self.num_threads, seed=self.seed, shard_id=shard_id, num_shards=num_shards,
                prefetch_queue_depth=self.prefetch_queue_depth, hw_decoder_load=self.hw_decoder_load,
                cpu_ops=self.decode == "cpu",
                train_view="resize" if self.aug == "baseline1" else "random-resized-crop",
            )
            self._apply_options(cfg)
            pipe = build_folder_pipeline([files[i] for i in order], [int(i) for i in order], cfg, checkpoint)
            make = lambda: DALIGenericIterator(  # noqa: E731
                pipe, ["images", "ids"], reader_name=READER_NAME,
                last_batch_policy=LastBatchPolicy.DROP if self.train else LastBatchPolicy.PARTIAL,
                auto_reset=False, **_ITERATOR_OPTIONS,
            )
        else:
            from pipelines.cifar import CifarFeed, CifarPipelineConfig, build_cifar_pipeline

            feed = CifarFeed(self.source.images, self.batch_size, train=self.train, shard_id=self.shard_id,
                             num_shards=self.num_shards, seed=self.seed)
            cfg = CifarPipelineConfig(
                train=self.train, batch_size=self.batch_size, out_size=self.out_size,
                device_id=self._device_id(), num_threads=self.num_threads, seed=self.seed,
                shard_id=self.shard_id, num_shards=self.num_shards,
                prefetch_queue_depth=self.prefetch_queue_depth, cpu_ops=self.decode == "cpu",
                **({"pad": 0} if self.aug == "baseline1" else {}),  # Baseline-I: resize + flip only
            )
            self._apply_options(cfg)
            pipe = build_cifar_pipeline(feed, cfg, checkpoint)
            # No reader: the feed ends each epoch with StopIteration and sizes the last batch itself.
            make = lambda: DALIGenericIterator(pipe, ["images", "ids"], auto_reset=False,  # noqa: E731
                                               **_ITERATOR_OPTIONS)
        self._iterator = self._dali_call(make)
        self._pipe = pipe

    def _apply_options(self, cfg) -> None:
        fixed = {"train", "batch_size", "device_id", "shard_id", "num_shards"}  # owned by the loader
        for key, value in self.pipeline_options.items():
            if key in fixed or not hasattr(cfg, key):
                raise ValueError(f"pipeline_options: {key!r} is not a settable option of {type(cfg).__name__}")
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
                    f"{self.prefetch_queue_depth}); lower the batch size or the prefetch depth.\n{msg}"
                ) from exc
            err = self._data_error(msg)
            if err is None:
                raise  # CUDA / driver / memory, or no file to blame: DALI's own error
            raise err from exc

    def _data_error(self, msg: str) -> UndecodableImageError | None:
        """The project's error naming the file(s) behind a DALI error, found by decode_check's isolated
        culprit search whatever DALI's message says; None: the error passes through as itself."""
        from .decode_check import loader_error

        return loader_error(msg, self._my_files() if self.kind == "folder" else None,
                            root=getattr(self.source, "root", ""), num_threads=min(self.num_threads, 8))

    def _my_files(self) -> list[str]:
        files = self.source.files
        if self.train:
            return files
        return files[self._eval_range[0]:self._eval_range[1]]

    # ----------------------------------------------------------------------------------------------
    # iteration
    # ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self._epoch()

    def _epoch(self):
        if self._iterator is None:  # an empty evaluation shard (more ranks than samples)
            self.epoch += 1
            return
        if self._consumed >= self._batches_per_epoch:
            # The previous pass took every batch but stopped before DALI said so: close that epoch.
            self._drain()
        while True:
            try:
                out = self._dali_call(lambda: next(self._iterator))
            except StopIteration:
                self._end_epoch()
                return
            images, ids = out[0]["images"], out[0]["ids"]
            if images.shape[0] == 0:
                continue
            self._consumed += 1
            yield self._convert(images, ids)

    def _convert(self, images: torch.Tensor, ids: torch.Tensor):
        # Everything below is queued on torch's current stream, right behind DALI's hand-off.
        if images.device != self.device:  # safety net: the graphs built here already deliver on self.device
            images = images.to(self.device, non_blocking=True)
            ids = ids.to(self.device, non_blocking=True)
        ids = ids.reshape(-1).to(torch.int64)
        events = images
        labels = self._labels[ids]
        soft = None
        if self.mix is not None:  # mixing on the images, before conversion (see training/mixing.py)
            images, soft = self.mix(images, labels)  # uint8 in; float 0..1 out where it mixed
        if self.convert and self.output != "events":
            events = static_frames(images, kind=self.output, timesteps=len(self.order), dtype=self.dtype)
        elif self.convert:
            events = i2e_convert(
                images, ratio=self.ratio, timesteps=self.timesteps, order=self.order,
                train=self.train and self.random_motion, per_sample=self.per_sample, generator=self._generator,
                dtype=self.dtype, impl=self.impl, validate=False, threshold=self.threshold,
                threshold_value=self.threshold_value,
            )
        if self.mix is not None:
            return events, labels, soft
        if self.with_index:
            return events, labels, ids
        return events, labels

    def _end_epoch(self) -> None:
        # Prepare the next epoch at once (DALI starts prefetching it), so the next pass is ready.
        self._dali_call(self._iterator.reset)
        self.epoch += 1
        self._consumed = 0

    def _drain(self) -> None:
        while True:
            try:
                self._dali_call(lambda: next(self._iterator))
            except StopIteration:
                break
        self._end_epoch()

    def reset(self) -> None:
        """Abandon the rest of the current epoch (its remaining batches are read and discarded)."""
        if self._iterator is not None and self._consumed > 0:
            self._drain()

    # ----------------------------------------------------------------------------------------------
    # exact resume
    # ----------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        return {
            "kind": self.kind, "train": self.train, "total_samples": self.total_samples,
            "batch_size": self.batch_size, "shard_id": self.shard_id, "num_shards": self.num_shards,
            "seed": self.seed, "image_size": list(self.image_size),
        }

    def state_dict(self) -> dict:
        """Position and random state; ``torch.save`` / ``torch.load(weights_only=True)`` friendly."""
        state = {"version": _STATE_VERSION, "epoch": self.epoch, "consumed": self._consumed, **self._fingerprint()}
        state["dali"] = self._iterator.checkpoints()[0] if self._iterator is not None else None
        state["generator"] = self._generator.get_state() if self._generator is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where the loader that produced ``state`` stood (same data set, batch
        size, shard and seed). Rebuilds the DALI pipeline from its checkpoint."""
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("not an EventLoader state (or from another version of i2e-dali)")
        self._check_fingerprint({k: state.get(k) for k in self._fingerprint()})
        if state["dali"] is not None:
            self._build(checkpoint=state["dali"])
        if self._generator is not None and state.get("generator") is not None:
            self._generator.set_state(state["generator"])
        self.epoch = int(state["epoch"])
        self._consumed = int(state["consumed"])

    def __repr__(self) -> str:
        return (
            f"EventLoader({self.source!r}, batch_size={self.batch_size}, train={self.train}, "
            f"device={self.device}, decode={self.decode}, shard={self.shard_id}/{self.num_shards}, "
            f"image_size={self.image_size}, T={len(self.order)}, ratio={self.ratio})"
        )
