"""How closely DALI's cubic resize matches PIL's BICUBIC (the authors' data-set protocol), in pixels and events.

    python -m i2e_dali.tools.interp_compare --samples ../shared/data/official-samples

Two cases on the official 224x224 photos: shrinking (224 -> ``--size``, like ImageNet photos -> 224) and
enlarging 4x (each photo first box-reduced to ``--small`` with PIL and stored losslessly, then
``--small`` -> 4 x ``--small``, like CIFAR's 32 -> 128). DALI decodes and resizes through the exporter's
own pipeline (plain resize view); PIL decodes and resizes with ``Image.resize(..., BICUBIC)``, which is
what torchvision's ``Resize(interpolation=BICUBIC)`` calls on PIL images. Reported: mean and max absolute
pixel difference (0..255), and for the events of both (evaluation mode, ``--ratio``) the share of the
T x 2 x H x W cells that agree and the F1 of DALI's events against PIL's. DALI's linear resize is shown
beside cubic for scale.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..convert import i2e_convert

__all__ = ["compare", "main"]


def _dali_resize(folder: Path, side: int, interp: str) -> dict[str, np.ndarray]:
    from ..convert import Conversion
    from ..data.event_loader import DaliOptions, EventLoader
    from ..data.sources import ImageFolderSource

    src = ImageFolderSource(folder)
    loader = EventLoader(src, 16, train=False, eval_view="resize", crop_size=side, resize_size=side,
                         conversion=Conversion(output="images"), with_index=True, device="cpu",
                         dali=DaliOptions(num_threads=2, extra={"interp": interp}))
    out = {}
    for images, _, idx in loader:
        for b, i in enumerate(idx.tolist()):
            out[Path(src.samples[i][0]).stem] = images[b].numpy()  # [3, H, W] uint8
    return out


def _events(images: np.ndarray, ratio: float) -> np.ndarray:
    return i2e_convert(torch.from_numpy(images), ratio=ratio, dtype=torch.bool).numpy()


def _stats(dali: dict, pil: dict, ratio: float) -> dict:
    names = sorted(pil)
    a = np.stack([dali[n] for n in names]).astype(np.int16)
    b = np.stack([pil[n] for n in names]).astype(np.int16)
    diff = np.abs(a - b)
    ea, eb = _events(a.astype(np.uint8), ratio), _events(b.astype(np.uint8), ratio)
    both = np.logical_and(ea, eb).sum()
    f1 = 2 * both / max(1, ea.sum() + eb.sum())
    return {"images": len(names), "mean_abs_pixel_diff": round(float(diff.mean()), 4), "max_abs_pixel_diff": int(diff.max()),
            "share_pixels_equal": round(float((diff == 0).mean()), 4), "event_cells_agree": round(float((ea == eb).mean()), 6),
            "event_f1": round(float(f1), 4), "rate_dali": round(float(ea.mean()), 5), "rate_pil": round(float(eb.mean()), 5)}


def compare(samples: str | Path, *, size: int = 128, small: int = 56, ratio: float = 0.12, limit: int | None = None) -> dict:
    from PIL import Image

    files = sorted(Path(samples).glob("*_rgb.jpg"))[:limit]
    if not files:
        raise FileNotFoundError(f"no *_rgb.jpg in {samples}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        down, up = Path(tmp, "down", "all"), Path(tmp, "up", "all")
        down.mkdir(parents=True)
        up.mkdir(parents=True)
        pil_down, pil_up = {}, {}
        for f in files:
            (down / f.name).symlink_to(f.resolve())
            img = Image.open(f).convert("RGB")
            pil_down[f.stem] = np.asarray(img.resize((size, size), Image.BICUBIC)).transpose(2, 0, 1)
            low = img.resize((small, small), Image.BOX)
            low.save(up / f"{f.stem}.png")
            pil_up[f.stem] = np.asarray(low.resize((4 * small, 4 * small), Image.BICUBIC)).transpose(2, 0, 1)
        for interp in ("cubic", "linear"):
            results[f"shrink 224->{size}, DALI {interp}"] = _stats(_dali_resize(down.parent, size, interp), pil_down, ratio)
            results[f"enlarge {small}->{4 * small}, DALI {interp}"] = _stats(
                _dali_resize(up.parent, 4 * small, interp), pil_up, ratio)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m i2e_dali.tools.interp_compare", description=__doc__.splitlines()[0])
    p.add_argument("--samples", default=str(Path(__file__).resolve().parents[3] / "shared/data/official-samples"))
    p.add_argument("--size", type=int, default=128, help="shrink target side")
    p.add_argument("--small", type=int, default=56, help="side before the 4x enlargement")
    p.add_argument("--ratio", type=float, default=0.12)
    p.add_argument("--limit", type=int, default=None, help="first N photos only")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        res = compare(args.samples, size=args.size, small=args.small, ratio=args.ratio, limit=args.limit)
    except (FileNotFoundError, ValueError) as exc:
        print(f"interp_compare: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print("| case | images | mean abs pixel diff | max | pixels equal | event cells agree | event F1 | rate DALI | rate PIL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in res.items():
        print(f"| {name} | {r['images']} | {r['mean_abs_pixel_diff']:.3f} | {r['max_abs_pixel_diff']} | "
              f"{100 * r['share_pixels_equal']:.1f} % | {100 * r['event_cells_agree']:.3f} % | {r['event_f1']:.4f} | "
              f"{100 * r['rate_dali']:.2f} % | {100 * r['rate_pil']:.2f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
