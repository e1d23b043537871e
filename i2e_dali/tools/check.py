"""``i2e-check ROOT``: list every file the DALI pipeline cannot use, before a long run.

DALI cannot skip an undecodable image in the middle of a batch: one bad file stops training. This
command walks ``ROOT/train`` and ``ROOT/val`` (or ROOT itself when it is a class-folder set), refuses
what the loader would refuse without decoding (non-image files, zero-byte files, empty class
folders) or declares more pixels than ``--max-pixels`` in its header (read without decoding; like PIL's
decompression-bomb guard), then decodes every image with DALI's CPU decoder the ways the loader does —
whole (evaluation view) and through the random-crop ROI decoder (training view), whose verdicts can
differ — and names each file that fails. Decoding runs in isolated worker processes (one per core), so a
file that crashes or hangs the decoder is named ("crashes the decoder", "decoder hang") instead of
killing the check. Exit code 0 when everything is usable, 1 otherwise, 2 when ROOT is not a data set.

    i2e-check /data/imagenet                # or: python -m i2e_dali.tools.check /data/imagenet
    i2e-check /data/imagenet --list bad.txt # also write the bad paths, one per line
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


from ..fsio import atomic_write_text
from ..placement import usable_cores
from ..data.decode_check import DEFAULT_TIME_LIMIT, decode_check, default_max_pixels
from ..errors import ConfigError
from ..data.sources import DatasetError, MissingDataError, scan_image_folder

__all__ = ["CheckReport", "check_folder", "main"]


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


def _split_roots(root: Path) -> tuple[list[Path], list[str]]:
    if not root.is_dir():
        raise MissingDataError(f"{root} is not a folder")
    splits = [root / s for s in ("train", "val") if (root / s).is_dir()]
    if splits:
        missing = [f"{root}/{s} is missing (the trainer needs both train/ and val/)"
                   for s in ("train", "val") if not (root / s).is_dir()]
        return splits, missing
    return [root], []


def check_folder(root: str | os.PathLike, *, num_threads: int | None = None, batch_size: int = 32,
                 progress: bool | None = None, time_limit: float = DEFAULT_TIME_LIMIT,
                 max_pixels: int | None = None) -> CheckReport:
    """Check ``root`` (with train/ and val/, or one class-folder set); ``num_threads`` decoder processes
    (default: every usable core), ``time_limit`` seconds per image before a decoder counts as hung,
    ``max_pixels`` the declared-size limit (None: :func:`~i2e_dali.data.decode_check.default_max_pixels`,
    0: none)."""
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
    limit = default_max_pixels() if max_pixels is None else (max_pixels or None)
    report.bad += decode_check(files, num_threads=num_threads, batch_size=batch_size, progress=progress,
                               time_limit=time_limit, max_pixels=limit)
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
    parser.add_argument("--threads", "--workers", dest="threads", type=int, default=usable_cores(),
                        help="decoder worker processes (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded per DALI batch in a worker")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                        help="seconds one image may take before its decoder is reported as hung")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="refuse images whose header declares more pixels than this, before decoding "
                             "(default: $I2E_DALI_MAX_PIXELS, else 89478485 as PIL; 0: no limit)")
    parser.add_argument("--list", type=Path, default=None, help="write the bad paths to this file, one per line")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch_size < 1:
        parser.error("--threads and --batch-size must be >= 1")
    if not args.time_limit > 0:
        parser.error("--time-limit must be > 0 seconds")
    if args.max_pixels is not None and args.max_pixels < 0:
        parser.error("--max-pixels must be >= 0 (0: no limit)")
    try:
        report = check_folder(args.root, num_threads=args.threads, batch_size=args.batch_size,
                              progress=False if args.quiet else None, time_limit=args.time_limit,
                              max_pixels=args.max_pixels)
    except (DatasetError, ConfigError) as exc:
        print(f"i2e-check: {exc}", file=sys.stderr)
        return 2
    print(_summary(report))
    if args.list is not None:
        atomic_write_text(args.list, "".join(f"{p}\n" for p, _ in report.bad))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
