"""Look at event streams: animated GIF (the authors' colours), a PNG contact sheet, and the GIF decoder.

``python -m i2e_dali.tools.viz IMAGE_OR_NPZ --out x.gif`` (console script ``i2e-viz``).

Colours (the authors' convention, so our GIFs compare with their published ``*_es.gif``):
ON = red (255, 0, 0), OFF = blue (0, 0, 255), no event = white. A pixel with both polarities in one
frame is magenta (255, 0, 255), red and blue mixed: I2E itself never produces it (ON needs d >= thr and
OFF -d >= thr with thr > 0), but frames from a real sensor (CIFAR10-DVS) or a foreign npz can.

An image is decoded with PIL, not DALI: it is one file, PIL is what the authors used for their GIFs and
the spec's F1 figure, and building a DALI pipeline for a single image costs more than decoding it.
The conversion is ``i2e_convert`` in evaluation mode (canonical motions) - the one conversion.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import GifImagePlugin, Image, ImageDraw, ImageFont, ImageSequence

from ..errors import EventGIFError
from ..fsio import atomic_write
from ..convert import DEFAULT_ORDER, GROUP_LETTERS, MOTION_GROUPS, i2e_convert, parse_order

__all__ = [
    "PALETTE",
    "events_to_indices",
    "events_to_rgb",
    "write_gif",
    "gif_to_events",
    "contact_sheet",
    "image_to_events",
    "main",
]

WHITE, RED, BLUE, MAGENTA = (255, 255, 255), (255, 0, 0), (0, 0, 255), (255, 0, 255)
# Palette index = on + 2 * off: 0 none, 1 ON, 2 OFF, 3 both.
PALETTE = (WHITE, RED, BLUE, MAGENTA)
FRAME_MS = 200  # the authors' GIFs use 200 ms per frame
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _as_numpy_events(events) -> np.ndarray:
    if isinstance(events, torch.Tensor):
        events = events.detach().cpu().numpy()
    events = np.asarray(events)
    if events.ndim != 4 or events.shape[1] != 2:
        raise ValueError(f"events must be [T, 2, H, W] (one sample), got shape {events.shape}")
    return events != 0


def events_to_indices(events) -> np.ndarray:
    """``[T, 2, H, W]`` -> palette indices ``[T, H, W]`` uint8 (0 none, 1 ON, 2 OFF, 3 both)."""
    ev = _as_numpy_events(events)
    return (ev[:, 0].astype(np.uint8) + 2 * ev[:, 1].astype(np.uint8)).astype(np.uint8)


def events_to_rgb(events) -> np.ndarray:
    """``[T, 2, H, W]`` -> RGB frames ``[T, H, W, 3]`` uint8 in the authors' colours."""
    return np.asarray(PALETTE, dtype=np.uint8)[events_to_indices(events)]


def write_gif(events, path: str | os.PathLike, *, duration_ms: int = FRAME_MS) -> Path:
    """Write ``[T, 2, H, W]`` events as an animated, looping GIF (one frame per timestep).

    Frames are assembled with Pillow's frame-level GIF API (getheader/getdata) rather than
    ``save(save_all=True)``, which merges identical consecutive frames (two empty timesteps would
    become one) and would make the frame count depend on the content.
    """
    index = events_to_indices(events)
    palette_bytes = bytes(np.asarray(PALETTE, dtype=np.uint8).ravel())

    def frame(i: int) -> Image.Image:
        im = Image.fromarray(index[i], mode="P")
        im.putpalette(palette_bytes)
        return im

    def write(f) -> None:
        header, _ = GifImagePlugin.getheader(frame(0), info={"loop": 0, "duration": duration_ms, "optimize": False})
        for chunk in header:
            f.write(chunk)
        for i in range(index.shape[0]):
            # disposal 1 (keep): each frame is full-size and opaque, so it fully replaces the last.
            for chunk in GifImagePlugin.getdata(frame(i), duration=duration_ms, disposal=1):
                f.write(chunk)
        f.write(b";")

    path = Path(path)
    atomic_write(path, write)
    return path


# Event GIFs are a few hundred pixels a side and T <= 8 frames; these bounds keep a damaged header from
# making us allocate gigabytes (a GIF may claim 65535 x 65535 pixels per frame).
_GIF_MAX_PIXELS = 4096 * 4096
_GIF_MAX_BYTES = 2**30
_GIF_ERRORS = (OSError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError, ZeroDivisionError,
               OverflowError, MemoryError, RuntimeError, SyntaxError, Image.DecompressionBombError)


def gif_to_events(path: str | os.PathLike) -> np.ndarray:
    """Decode an event GIF (ours or the authors') to bool ``[T, 2, H, W]``: red = ON, blue = OFF.

    Every frame is composited by Pillow (palette or RGB frames, partial frames, any disposal) and
    classified by colour with a wide margin, so near-red / near-blue shades from re-encoding count:
    ON where R >= 128 and G < 128, OFF where B >= 128 and G < 128 (magenta is both; white, black and
    greys are none).
    """
    path = Path(path)
    frames = []
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > _GIF_MAX_PIXELS:  # refused from the header, before a pixel is decoded
                raise EventGIFError(f"{path}: the GIF claims {w} x {h} pixels per frame (more than "
                                    f"{_GIF_MAX_PIXELS:,}); not an event GIF, or corrupt")
            for f in ImageSequence.Iterator(im):
                if (len(frames) + 1) * w * h * 3 > _GIF_MAX_BYTES:
                    raise EventGIFError(f"{path}: more than {len(frames)} frames of {w} x {h}; not an event GIF, "
                                        "or corrupt")
                frames.append(np.asarray(f.convert("RGB")))
    except FileNotFoundError:
        raise FileNotFoundError(f"GIF {path} does not exist") from None
    except EventGIFError:
        raise
    except _GIF_ERRORS as exc:  # what Pillow raises on damaged files (struct.error, IndexError, bombs, ...)
        raise EventGIFError(f"{path}: not a readable GIF ({type(exc).__name__}: {exc})") from exc
    if not frames or any(fr.shape != frames[0].shape for fr in frames):
        raise EventGIFError(f"{path}: no frames, or frames of different sizes; not an event GIF")
    rgb = np.stack(frames).astype(np.int16)  # [T, H, W, 3]
    r, g, b = rgb[..., 0] >= 128, rgb[..., 1] >= 128, rgb[..., 2] >= 128
    on = r & ~g
    off = b & ~g
    return np.stack([on, off], axis=1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has a single bitmap font
        return ImageFont.load_default()


def contact_sheet(
    events,
    image: np.ndarray | Image.Image | None = None,
    *,
    order: Sequence[int] | None = None,
    min_tile: int = 96,
    gap: int = 4,
) -> Image.Image:
    """One row: the source image (when given) then the T event frames, each captioned."""
    rgb = events_to_rgb(events)
    T, H, W, _ = rgb.shape
    scale = max(1, -(-min_tile // max(H, W)))  # nearest-neighbour upscale of tiny frames (CIFAR 32)
    tiles: list[tuple[Image.Image, str]] = []
    if image is not None:
        src = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        tiles.append((src.convert("RGB").resize((W * scale, H * scale), Image.NEAREST), "source"))
    order = tuple(order) if order is not None else DEFAULT_ORDER[:T]
    for t in range(T):
        caption = f"t={t}"
        if t < len(order):
            s, e = MOTION_GROUPS[order[t]][0]
            caption += f" {GROUP_LETTERS[order[t]]} [{s},{e}]"
        tiles.append((Image.fromarray(rgb[t]).resize((W * scale, H * scale), Image.NEAREST), caption))
    font = _font(max(10, min(16, W * scale // 10)))
    text_h = font.getbbox("Ag")[3] + 2 * gap
    tw, th = W * scale, H * scale
    sheet = Image.new("RGB", (len(tiles) * (tw + gap) + gap, th + text_h + 2 * gap), (200, 200, 200))
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(tiles):
        x = gap + i * (tw + gap)
        sheet.paste(tile, (x, gap))
        draw.text((x + 2, th + 2 * gap), caption, fill=(0, 0, 0), font=font)
    return sheet


def image_to_events(
    image: Image.Image | np.ndarray,
    *,
    ratio: float = 0.12,
    timesteps: int = 8,
    order=None,
    fixed_threshold: float | None = None,
) -> np.ndarray:
    """One RGB image (PIL or HxWx3 uint8) -> bool events ``[T, 2, H, W]`` (evaluation mode); with
    ``fixed_threshold`` one absolute threshold on V (the paper's ablation) instead of ratio x range."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)[None]
    ev = i2e_convert(x, ratio=ratio, timesteps=timesteps, order=order, train=False, dtype=torch.bool,
                     threshold="adaptive" if fixed_threshold is None else "fixed", threshold_value=fixed_threshold)
    return ev[:, 0].numpy()


def _load_image(path: Path, size: int | None) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # grayscale, CMYK, palette, alpha -> RGB
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot decode this image ({exc}); is it an image file?") from exc
    if size is not None:
        im = im.resize((size, size), Image.BILINEAR)
    return im


def _parse_args(argv):
    p = argparse.ArgumentParser(
        prog="i2e-viz",
        description="Write the I2E event stream of an image (or a stored .npz sample) as an animated GIF "
        "(ON red, OFF blue, white none) plus a PNG contact sheet.",
    )
    p.add_argument("input", type=Path, help="an image (JPEG/PNG/...) or an event .npz (dense or sparse)")
    p.add_argument("--out", type=Path, default=None, help="GIF to write (default: <input stem>_es.gif here)")
    p.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet (default: the GIF's name with .png)")
    p.add_argument("--no-sheet", action="store_true", help="write only the GIF")
    p.add_argument("--ratio", type=float, default=0.12, help="threshold ratio (0.12 ImageNet, 0.07 CIFAR@128)")
    p.add_argument("--fixed-threshold", type=float, default=None, metavar="X",
                   help="ablation: one absolute threshold X on V in (0, 1] instead of ratio x the image's range")
    p.add_argument("--timesteps", type=int, default=None, help="T (images: default 8; npz: first T frames)")
    p.add_argument("--order", default=None, help="group order, e.g. efghabcd (the default)")
    p.add_argument("--size", type=int, default=None,
                   help="images: resize to SIZE x SIZE first (default: keep); sparse npz without a stored "
                        "shape: the frame size")
    p.add_argument("--duration", type=int, default=FRAME_MS, help="milliseconds per frame")
    return p.parse_args(argv)


def run(args) -> tuple[Path, Path | None, np.ndarray]:
    src = args.input
    out = args.out or Path(f"{src.stem}_es.gif")
    if out.suffix.lower() != ".gif":
        raise ValueError(f"--out {out}: the animation is a GIF, give a name ending in .gif")
    image = None
    order = parse_order(args.order, args.timesteps or 8) if args.order else None
    if src.suffix.lower() == ".npz":
        from ..data.npz import load_events

        shape = None
        if args.size is not None:
            shape = (args.timesteps or 8, args.size, args.size)
        events = load_events(src, shape)
        if args.timesteps is not None:
            if args.timesteps > events.shape[0]:
                raise ValueError(f"{src} holds {events.shape[0]} timesteps; --timesteps {args.timesteps} is too many")
            events = events[: args.timesteps]
    elif src.suffix.lower() in IMAGE_SUFFIXES or src.suffix == "" or src.is_file():
        image = _load_image(src, args.size)
        events = image_to_events(image, ratio=args.ratio, timesteps=args.timesteps or 8, order=args.order,
                                 fixed_threshold=args.fixed_threshold)
    else:
        raise ValueError(f"{src}: give an image or an .npz file")
    write_gif(events, out, duration_ms=args.duration)
    sheet_path = None
    if not args.no_sheet:
        sheet_path = args.sheet or out.with_suffix(".png")
        sheet = contact_sheet(events, image, order=order)
        atomic_write(sheet_path, lambda f: sheet.save(f, format="PNG"))
    return out, sheet_path, events


def main(argv=None) -> int:
    args = _parse_args(argv)
    try:
        out, sheet, events = run(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"i2e-viz: error: {exc}", file=sys.stderr)
        return 2
    rates = events.reshape(events.shape[0], 2, -1).mean(axis=2)
    print(f"wrote {out} ({events.shape[0]} frames of {events.shape[2]}x{events.shape[3]})"
          + (f" and {sheet}" if sheet else ""))
    print("event rate per timestep (ON, OFF): " + ", ".join(f"t{t} {on:.4f}/{off:.4f}" for t, (on, off) in enumerate(rates)))
    print(f"mean event rate: {rates.mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
