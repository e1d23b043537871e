"""``i2e-check ROOT``: list every file the DALI pipeline cannot use, before a long run.

DALI cannot skip an undecodable image in the middle of a batch: one bad file stops training. This
command walks ``ROOT/train`` and ``ROOT/val`` (or ROOT itself when it is a class-folder set), refuses
what the loader would refuse without decoding (non-image files, zero-byte files, empty class
folders), then decodes every image with DALI's CPU decoder — the same decoder family the pipeline
uses — and names each file that fails. Exit code 0 when everything is usable, 1 otherwise.

    i2e-check /data/imagenet                # or: python -m i2e_dali.check /data/imagenet
    i2e-check /data/imagenet --list bad.txt # also write the bad paths, one per line
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .fsio import atomic_write_text
from .placement import usable_cores
from .datasets import DatasetError, MissingDataError, dali_error_detail, scan_image_folder

__all__ = ["CheckReport", "check_folder", "decode_check", "main"]


@dataclass
class CheckReport:
    roots: list[Path] = field(default_factory=list)
    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    empty_classes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # folder-level: missing split, class mismatch

    @property
    def ok(self) -> bool:
        return not (self.bad or self.empty_classes or self.problems)


def _reason(exc: Exception) -> str:
    return f"cannot be decoded (DALI: {dali_error_detail(str(exc)) or type(exc).__name__})"


def _decoder(batch_size: int, num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        img = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
        # Keep the output tiny: we only need to know that decoding worked.
        return img.shape()

    p = pipe()
    p.build()
    return p


def _read(path: str) -> np.ndarray | Exception:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return exc


def decode_check(files: list[str], *, num_threads: int = 2, batch_size: int = 32,
                 progress: bool | None = None) -> list[tuple[str, str]]:
    """Decode every file with DALI's CPU decoder; return ``(path, reason)`` for each failure.

    Batches are decoded in parallel (``num_threads``); a failing batch is re-decoded one file at a time
    (a DALI pipeline is unusable after an error, so it is rebuilt) to name the culprit(s).
    """
    bad: list[tuple[str, str]] = []
    if not files:
        return bad
    batch_size = max(1, min(batch_size, len(files)))
    pipe = _decoder(batch_size, num_threads)
    single = None
    chunks = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    bar = tqdm(total=len(files), desc="decoding", unit="img", disable=True if progress is False else None)
    with ThreadPoolExecutor(max_workers=max(2, num_threads)) as pool:
        pending = pool.map(lambda chunk: [_read(f) for f in chunk], chunks)  # reads run ahead of decoding
        for chunk, datas in zip(chunks, pending):
            todo = []
            for f, d in zip(chunk, datas):
                if isinstance(d, Exception):
                    bad.append((f, f"cannot read: {d}"))
                elif d.size == 0:
                    bad.append((f, "empty (zero-byte) file"))
                else:
                    todo.append((f, d))
            if todo:
                try:
                    pipe.feed_input("enc", [d for _, d in todo])
                    pipe.run()
                except Exception:  # noqa: BLE001 - DALI raises RuntimeError subclasses; find the file(s)
                    pipe = _decoder(batch_size, num_threads)
                    for f, d in todo:
                        if single is None:
                            single = _decoder(1, 1)
                        try:
                            single.feed_input("enc", [d])
                            single.run()
                        except Exception as exc:  # noqa: BLE001
                            bad.append((f, _reason(exc)))
                            single = None
            bar.update(len(chunk))
    bar.close()
    return bad


def _split_roots(root: Path) -> tuple[list[Path], list[str]]:
    if not root.is_dir():
        raise MissingDataError(f"{root} is not a folder")
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()]
    if splits:
        missing = [f"{root}/{s} is missing (the trainer needs both train/ and val/)"
                   for s in ("train", "val") if not (root / s).is_dir()]
        return splits, missing
    return [root], []


def check_folder(root: str | os.PathLike, *, num_threads: int = 2, batch_size: int = 32,
                 progress: bool | None = None) -> CheckReport:
    root = Path(root).expanduser()
    report = CheckReport()
    report.roots, report.problems = _split_roots(root)
    files: list[str] = []
    classes_seen = {}
    for split in report.roots:
        scan = scan_image_folder(split, progress=progress)
        if not scan.classes:
            report.problems.append(f"{split} has no class sub-folders (expected {split}/<class>/<image>)")
        classes_seen[split.name] = scan.classes
        report.bad += [(str(p), "not an image file (extension)") for p in scan.not_images]
        report.bad += [(str(p), "empty (zero-byte) or unreadable file") for p in scan.empty_files]
        report.empty_classes += [str(p) for p in scan.empty_classes]
        files += [p for p, _ in scan.samples]
    if len(classes_seen) == 2 and classes_seen.get("train") != classes_seen.get("val"):
        report.problems.append("train/ and val/ have different class folders; labels would not match")
    report.checked = len(files) + len(report.bad)
    report.bad += decode_check(files, num_threads=num_threads, batch_size=batch_size, progress=progress)
    return report


def _summary(report: CheckReport) -> str:
    where = ", ".join(str(r) for r in report.roots)
    lines = [f"checked {report.checked} files in {where}"]
    for p in report.problems:
        lines.append(f"PROBLEM: {p}")
    for c in report.empty_classes:
        lines.append(f"EMPTY CLASS FOLDER: {c}")
    for path, why in report.bad:
        lines.append(f"BAD: {path}: {why}")
    if report.ok:
        lines.append("OK: every file decodes; the loader can use this data set")
    else:
        lines.append(
            f"{len(report.bad)} unusable file(s), {len(report.empty_classes)} empty class folder(s), "
            f"{len(report.problems)} folder problem(s). Remove or re-encode the files (e.g. re-save as RGB "
            "JPEG), delete or fill the empty folders, then run i2e-check again."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="i2e-check", description="List every file in an image data set that the DALI pipeline cannot decode."
    )
    parser.add_argument("root", help="data set root (with train/ and val/) or one class-folder set")
    parser.add_argument("--threads", type=int, default=usable_cores(),
                        help="decoder threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded per DALI batch")
    parser.add_argument("--list", type=Path, default=None, help="write the bad paths to this file, one per line")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch_size < 1:
        parser.error("--threads and --batch-size must be >= 1")
    try:
        report = check_folder(args.root, num_threads=args.threads, batch_size=args.batch_size,
                              progress=False if args.quiet else None)
    except DatasetError as exc:
        print(f"i2e-check: {exc}", file=sys.stderr)
        return 2
    print(_summary(report))
    if args.list is not None:
        atomic_write_text(args.list, "".join(f"{p}\n" for p, _ in report.bad))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
