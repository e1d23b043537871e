"""DALI graphs for ImageNet-style folders (``root/<class>/<image>``): read, shard, decode, augment.

No torch here: the graphs hand uint8 ``[B, 3, H, W]`` (CHW) images and int32 sample ids ``[B, 1]``
to whoever runs them (``i2e_dali.data.event_loader.EventLoader``). The same graph serves GPU and CPU: with a
``device_id`` the decoder runs as "mixed" (nvJPEG, with the hardware JPEG decoder where the GPU has
one) and every later operator on the GPU; with ``device_id=None`` everything runs on the CPU.

Views:
- train: random-resized-crop (area 0.08-1, aspect 3/4-4/3) fused into the decoder (only the crop's
  region is decoded), resize to ``crop_size`` x ``crop_size``, random horizontal flip;
- train "resize" (``train_view``, the paper's Baseline-I): the whole image resized to ``crop_size`` x
  ``crop_size``, random horizontal flip;
- eval "crop": resize the shorter side to ``resize_size`` (256), centre crop ``crop_size`` (224);
- eval "resize": resize straight to ``crop_size`` x ``crop_size`` (the authors' train-set export view).

The reader's "labels" are whatever integers the caller passes; the loader passes the sample's index
into its file list, so the class label (and, for the exporter, the file) is looked up afterwards.

Declared-size guard (``max_pixels``, off by default here; the loader turns it on with
``i2e_dali.data.decode_check.default_max_pixels()``): ``fn.peek_image_shape`` reads each image's header on the
CPU (no pixel decoded) and a sample declaring more than ``max_pixels`` pixels has its encoded bytes replaced
by a tiny placeholder JPEG (a DALI conditional) before any decoder sees it, so a decompression bomb or a lying
header (6081 x 43406) costs no allocation and cannot break the random-crop window. The graph then has a third
output, "declared": each sample's declared shape (H, W, C) int64, on the CPU; whoever runs the graph must
refuse a batch holding a sample over the limit (its image is the placeholder): the EventLoader does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from . import DEFAULT_SEED, interp_type, pipeline_options

__all__ = ["FolderPipelineConfig", "EVAL_VIEWS", "TRAIN_VIEWS", "READER_NAME", "build_folder_pipeline", "decode_views",
           "PLACEHOLDER_JPEG"]

READER_NAME = "Reader"
# What a sample over the pixel limit is decoded as instead of itself: an 8 x 8 black greyscale baseline JPEG
# (160 bytes, PIL quality 50). Valid for every view: a random crop of 8 x 8 still has a window.
PLACEHOLDER_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb004300100b0c0e0c0a100e0d0e1211101318281a181616183123251d283a33"
    "3d3c3933383740485c4e404457453738506d51575f626768673e4d71797064785c656763ffc0000b080008000801011100ffc4001400"
    "0100000000000000000000000000000007ffc40014100100000000000000000000000000000000ffda0008010100003f003f7fffd9"
)
EVAL_VIEWS = ("crop", "resize")
TRAIN_VIEWS = ("random-resized-crop", "resize")


@dataclass
class FolderPipelineConfig:
    """Everything the folder graph needs besides the file list. Defaults are the paper's ImageNet views.

    GPU knobs (ignored on the CPU path):
    - ``hw_decoder_load``: share of each batch sent to the hardware JPEG decoder (A100/H100 have one);
      the rest goes to the CUDA decoder so both engines stay busy. 0.65 is DALI's current default.
    - ``preallocate_width_hint`` / ``preallocate_height_hint``, ``device_memory_padding`` /
      ``host_memory_padding``: pre-size the decoder's buffers for ImageNet-sized photos so the first
      epochs do not re-allocate (the values from NVIDIA's ResNet-50 example).
    """

    train: bool
    batch_size: int
    crop_size: int = 224
    resize_size: int = 256
    eval_view: str = "crop"
    device_id: int | None = None
    num_threads: int = 4
    seed: int = DEFAULT_SEED
    shard_id: int = 0
    num_shards: int = 1
    shuffle: bool | None = None  # None: shuffle when training
    random_area: tuple[float, float] = (0.08, 1.0)
    random_aspect_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    prefetch_queue_depth: int = 2
    hw_decoder_load: float = 0.65
    preallocate_width_hint: int = 5980
    preallocate_height_hint: int = 6430
    device_memory_padding: int = 211_025_920
    host_memory_padding: int = 140_544_512
    dont_use_mmap: bool = False  # True helps on network file systems
    enable_checkpointing: bool = True
    # Training view: "random-resized-crop" (the paper's Baseline-II) or "resize" (Baseline-I: the whole
    # image resized to crop_size x crop_size, then the random flip).
    train_view: str = "random-resized-crop"
    # Interpolation of the evaluation views' resize (INTERPOLATIONS; the exporter's presets use "cubic").
    interp: str = "linear"
    # With a device_id: True decodes and augments on the CPU and moves only the finished uint8 batch to
    # the GPU (``.gpu()``: DALI's pinned staging + its own stream, so CPU decoding overlaps training).
    cpu_ops: bool = False
    # The mixed decoder's chroma upsampling the way libjpeg-turbo (DALI's CPU decoder, PIL) does it, so
    # GPU- and CPU-decoded pixels agree on ordinary 4:2:0 JPEGs (DALI's default is False).
    jpeg_fancy_upsampling: bool = True
    # Declared-size guard (module docstring): 0 = off (no extra op, two outputs); N > 0 = replace samples
    # whose header declares more than N pixels, and add the "declared" output.
    max_pixels: int = 0

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.crop_size < 1 or self.resize_size < 1:
            raise ValueError(f"crop_size and resize_size must be >= 1, got {self.crop_size}, {self.resize_size}")
        if not self.train and self.eval_view == "crop" and self.resize_size < self.crop_size:
            raise ValueError(
                f"resize_size ({self.resize_size}) must be >= crop_size ({self.crop_size}) for the 'crop' view"
            )
        if self.train_view not in TRAIN_VIEWS:
            raise ValueError(f"train_view must be one of {TRAIN_VIEWS}, got {self.train_view!r}")
        if self.eval_view not in EVAL_VIEWS:
            raise ValueError(f"eval_view must be one of {EVAL_VIEWS}, got {self.eval_view!r}")
        if not 0 <= self.shard_id < self.num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={self.num_shards}), got {self.shard_id}")
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")
        if self.num_threads < 1 or self.prefetch_queue_depth < 1:
            raise ValueError("num_threads and prefetch_queue_depth must be >= 1")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 0:
            raise ValueError(f"max_pixels must be an int >= 0 (0 = no limit), got {self.max_pixels!r}")


# Conditionals (the guard's per-sample branch) are enabled on every graph; with the guard off there is no
# ``if`` on a DataNode and the graph holds the same operators as without them.
@pipeline_def(enable_conditionals=True)
def _folder_graph(files: Sequence[str] | None, sample_ids: Sequence[int] | None, cfg: FolderPipelineConfig,
                  file_list: str | None = None, file_root: str | None = None):
    shuffle = cfg.train if cfg.shuffle is None else cfg.shuffle
    # A file list on disk ("path id" lines, written by the loader per epoch and rank) keeps a million
    # paths out of Python lists; ``files``/``sample_ids`` remain for small, explicit lists.
    listing = ({"file_list": file_list, **({"file_root": file_root} if file_root else {})} if file_list
               else {"files": list(files), "labels": list(sample_ids)})
    encoded, ids = fn.readers.file(
        **listing,
        # A fresh global permutation every epoch, identical on every shard (DALI seeds it from the
        # epoch), so shards stay disjoint. Needs equal shard sizes: the loader trims the list.
        shuffle_after_epoch=shuffle,
        shard_id=cfg.shard_id,
        num_shards=cfg.num_shards,
        # Pad the shard's last batch instead of running into the next epoch: epochs stay aligned to
        # batches, so every epoch starts clean (the iterator drops or trims the padding).
        pad_last_batch=True,
        dont_use_mmap=cfg.dont_use_mmap,
        name=READER_NAME,
    )
    return decode_views(encoded, ids, cfg)


def _guard_declared_size(encoded, max_pixels: int):
    """``(encoded, declared)``: samples whose header declares more than ``max_pixels`` pixels swapped for
    PLACEHOLDER_JPEG, and every sample's declared shape (H, W, C) from the header alone."""
    declared = fn.peek_image_shape(encoded, dtype=types.INT64)
    # int64 throughout: a declared 65535 x 65535 (the JPEG maximum) overflows int32
    if declared[0] * declared[1] > types.Constant(max_pixels, dtype=types.INT64):
        encoded = types.Constant(np.frombuffer(PLACEHOLDER_JPEG, np.uint8), dtype=types.UINT8, device="cpu")
    return encoded, declared


def decode_views(encoded, ids, cfg: FolderPipelineConfig):
    """The decode + view part of the graph (every train/eval view above), shared by every reader of
    encoded images (files here, tar shards in ``pipelines.shards``): ``(images uint8 [B,3,S,S], ids)``,
    both moved to the GPU when ``cfg.device_id`` is set; with ``cfg.max_pixels`` a third output, the declared
    shapes (CPU, see the module docstring). Must be called from a graph with ``enable_conditionals``."""
    declared = None
    if cfg.max_pixels:
        encoded, declared = _guard_declared_size(encoded, cfg.max_pixels)
    gpu = cfg.device_id is not None and not cfg.cpu_ops  # GPU decode + GPU operators
    decoder_kw = {"device": "mixed" if gpu else "cpu", "output_type": types.RGB}
    if gpu:
        decoder_kw.update(
            hw_decoder_load=cfg.hw_decoder_load,
            preallocate_width_hint=cfg.preallocate_width_hint,
            preallocate_height_hint=cfg.preallocate_height_hint,
            device_memory_padding=cfg.device_memory_padding,
            host_memory_padding=cfg.host_memory_padding,
            jpeg_fancy_upsampling=cfg.jpeg_fancy_upsampling,
        )
    size = cfg.crop_size
    if cfg.train and cfg.train_view == "resize":  # Baseline-I: whole image, fixed size, random flip
        images = fn.decoders.image(encoded, **decoder_kw)
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        mirror = fn.random.coin_flip(probability=0.5)
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=mirror)
    elif cfg.train:
        images = fn.decoders.image_random_crop(
            encoded,
            random_area=list(cfg.random_area),
            random_aspect_ratio=list(cfg.random_aspect_ratio),
            num_attempts=10,  # torchvision's RandomResizedCrop tries 10 times, then centre-crops
            **decoder_kw,
        )
        images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR, antialias=True)
        mirror = fn.random.coin_flip(probability=0.5)
        images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW", mirror=mirror)
    else:
        images = fn.decoders.image(encoded, **decoder_kw)
        if cfg.eval_view == "crop":
            images = fn.resize(
                images, resize_shorter=cfg.resize_size, interp_type=interp_type(cfg.interp), antialias=True
            )
            images = fn.crop_mirror_normalize(
                images, crop=(size, size), crop_pos_x=0.5, crop_pos_y=0.5, dtype=types.UINT8, output_layout="CHW"
            )
        else:
            images = fn.resize(images, resize_x=size, resize_y=size, interp_type=interp_type(cfg.interp),
                               antialias=True)
            images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="CHW")
    if cfg.device_id is not None:
        if not gpu:
            images = images.gpu()  # CPU decode for a GPU consumer: DALI moves the batch, not torch
        ids = ids.gpu()  # labels travel with the images, so torch gets both on the device
    # "declared" stays on the CPU: the host reads it after each batch without waiting for the device
    return (images, ids) if declared is None else (images, ids, declared)


def build_folder_pipeline(
    files: Sequence[str] | None,
    sample_ids: Sequence[int] | None,
    cfg: FolderPipelineConfig,
    checkpoint: str | None = None,
    *,
    file_list: str | None = None,
    file_root: str | None = None,
):
    """An (unbuilt) DALI pipeline with outputs ``images`` uint8 [B,3,S,S] and ``ids`` int32 [B,1] (and
    ``declared`` int64 [B,3] on the CPU when ``cfg.max_pixels`` is set).

    ``files`` are absolute paths, ``sample_ids`` the integers handed back for each (same length); or
    ``file_list``: a text file of DALI's ``file_list`` format ("path id" per line, paths below
    ``file_root``), with ``files``/``sample_ids`` None.
    ``checkpoint`` restores a state saved by ``Pipeline.checkpoint()`` (reader position, RNG states).
    """
    cfg.validate()
    if file_list is not None:
        return _folder_graph(None, None, cfg, file_list, file_root, **pipeline_options(cfg, checkpoint))
    if len(files) != len(sample_ids):
        raise ValueError(f"files ({len(files)}) and sample_ids ({len(sample_ids)}) differ in length")
    if not files:
        raise ValueError("the file list is empty; a DALI reader needs at least one file")
    return _folder_graph(files, sample_ids, cfg, **pipeline_options(cfg, checkpoint))
