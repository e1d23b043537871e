"""Tar shards and their DALI index files: reading a tar's member table, grouping members into samples
the way DALI's webdataset reader does, and reading/writing DALI's index format.

Index file (DALI ``tools/wds2idx.py``'s format, what ``fn.readers.webdataset(index_paths=...)`` reads):
    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]   (one line per sample)
``data offset`` is where the member's bytes start in the tar (header offset + header size, a multiple of
512). v1.1 lines omit the member name. Members belong to one sample while their *key* (the name up to the
first dot after the last "/") is the same; names whose key is empty (hidden files) are skipped, as DALI does.

Every failure here is a ``DatasetError`` naming the shard (and member or index line): a damaged or
truncated tar, an index that does not parse or points outside its tar. Reads are bounded by the
file's size, so a damaged length field cannot make them allocate or loop without end.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field

from ..errors import DatasetError

__all__ = ["Member", "Sample", "scan_tar", "group_samples", "parse_index", "format_index", "split_key"]

BLOCK = 512
_MAX_CLS_BYTES = 64  # a class label is a short decimal number; anything longer is not a label


@dataclass
class Member:
    name: str
    offset: int  # where the data starts
    size: int


@dataclass
class Sample:
    key: str
    components: dict[str, Member] = field(default_factory=dict)  # ext -> member


def split_key(name: str) -> tuple[str, str]:
    """(key, ext) the way DALI splits a member name: at the first dot after the last slash."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def scan_tar(fileobj, shard: str, *, read_ext: tuple[str, ...] = (), size: int | None = None):
    """The regular-file members of the tar in ``fileobj`` (read sequentially) as ``(members, contents)``:
    ``contents`` maps a member's name to its bytes for members whose ext is in ``read_ext`` (small ones
    only: ``.cls`` labels). ``DatasetError`` naming ``shard`` (and the member) when the tar is damaged."""
    members, contents = [], {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isreg():
                    continue
                if info.size < 0 or info.offset_data % BLOCK or (size is not None and info.offset_data + info.size > size):
                    raise DatasetError(f"tar shard {shard}: member {info.name!r} runs past the end of the file "
                                       "(truncated or damaged tar); re-create the shard")
                members.append(Member(info.name, info.offset_data, info.size))
                if read_ext and split_key(info.name)[1].lower() in read_ext:
                    if info.size > _MAX_CLS_BYTES:
                        raise DatasetError(f"tar shard {shard}: member {info.name!r} holds {info.size} bytes, not a "
                                           "class number")
                    f = tar.extractfile(info)
                    data = f.read() if f is not None else b""
                    if len(data) != info.size:
                        raise DatasetError(f"tar shard {shard}: member {info.name!r} is cut short (truncated tar)")
                    contents[info.name] = data
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError, OverflowError) as exc:
        where = f" after member {members[-1].name!r}" if members else ""
        raise DatasetError(f"tar shard {shard} is not a readable tar archive{where} ({type(exc).__name__}: {exc}); "
                           "re-create or re-download the shard") from exc
    return members, contents


def group_samples(members: list[Member]) -> list[Sample]:
    """Consecutive members with the same key form one sample (DALI's rule); hidden members are skipped."""
    samples: list[Sample] = []
    for m in members:
        key, ext = split_key(m.name)
        if not key or key.endswith("/") or key.rsplit("/", 1)[-1].startswith("."):
            continue
        if not samples or samples[-1].key != key:
            samples.append(Sample(key))
        samples[-1].components[ext] = m
    return samples


def format_index(samples: list[Sample]) -> str:
    """A v1.2 index file for ``samples`` (the members' names are written too)."""
    for s in samples:
        for m in s.components.values():
            if any(c.isspace() for c in m.name):
                raise DatasetError(f"member name {m.name!r} holds whitespace; DALI's index format cannot list it")
    lines = [f"v1.2 {len(samples)}"]
    lines += [" ".join(f"{ext} {m.offset} {m.size} {m.name}" for ext, m in s.components.items()) for s in samples]
    return "\n".join(lines) + "\n"


def parse_index(text: bytes | str, index: str, *, tar_size: int | None = None, shard: str = "") -> list[Sample]:
    """Parse an index file's text (``index`` names it in errors). With ``tar_size``, every member must lie
    inside the tar (an index of another or a truncated tar is refused, naming ``shard``)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"index file {index} is not text (damaged?); re-create it with `i2e-shard --index`") from None
    lines = text.split("\n")
    head = lines[0].split()
    if len(head) != 2 or head[0] not in ("v1.0", "v1.1", "v1.2") or not head[1].isdigit():
        raise DatasetError(f"index file {index}: the first line must be 'v1.2 <samples>', got {lines[0][:60]!r}")
    with_names = head[0] == "v1.2"
    n = int(head[1])
    body = [ln for ln in lines[1:] if ln.strip()]
    if n < 1 or len(body) != n:
        raise DatasetError(f"index file {index} announces {n} samples but lists {len(body)}; re-create it")
    step = 4 if with_names else 3
    samples = []
    for lineno, line in enumerate(body, start=2):
        parts = line.split()
        if not parts or len(parts) % step:
            raise DatasetError(f"index file {index} line {lineno}: expected '<ext> <offset> <size>"
                               f"{' <name>' if with_names else ''}' groups")
        sample = None
        for k in range(0, len(parts), step):
            ext, off, size = parts[k], parts[k + 1], parts[k + 2]
            if not (off.isdigit() and size.isdigit()) or int(off) % BLOCK:
                raise DatasetError(f"index file {index} line {lineno}: offset and size must be whole numbers, the "
                                   f"offset a multiple of {BLOCK}; got {off!r} {size!r}")
            name = parts[k + 3] if with_names else f"#{lineno - 1}.{ext}"
            off, size = int(off), int(size)
            if tar_size is not None and off + size > tar_size:
                raise DatasetError(f"index file {index} line {lineno} does not match tar shard {shard}: member {name!r} "
                                   f"would end at byte {off + size} of a {tar_size}-byte file (truncated tar, or the "
                                   "index of another tar); re-create the index with `i2e-shard --index`")
            if sample is None:
                sample = Sample(split_key(name)[0] if with_names else f"#{lineno - 1}")
            sample.components[ext] = Member(name, off, size)
        samples.append(sample)
    return samples


def read_member(path_or_obj, member: Member, shard: str, *, file_size: int | None = None) -> bytes:
    """One member's bytes from a local tar (path or open binary file)."""
    if file_size is not None and member.offset + member.size > file_size:
        raise DatasetError(f"tar shard {shard}: member {member.name!r} lies past the end of the file")
    try:
        if isinstance(path_or_obj, (str, os.PathLike)):
            with open(path_or_obj, "rb") as f:
                f.seek(member.offset)
                data = f.read(member.size)
        else:
            path_or_obj.seek(member.offset)
            data = path_or_obj.read(member.size)
    except OSError as exc:
        raise DatasetError(f"tar shard {shard}: cannot read member {member.name!r} ({exc})") from exc
    if len(data) != member.size:
        raise DatasetError(f"tar shard {shard}: member {member.name!r} is cut short (truncated tar)")
    return data


def parse_label(data: bytes, shard: str, member: str, num_classes: int | None = None) -> int:
    """A ``.cls`` member's class number (ASCII decimal, the WebDataset convention)."""
    text = data.strip()
    if not text.isdigit() or len(text) > 18:
        raise DatasetError(f"tar shard {shard}: member {member!r} should hold a class number, got {data[:20]!r}")
    label = int(text)
    if num_classes is not None and label >= num_classes:
        raise DatasetError(f"tar shard {shard}: member {member!r} holds class {label}, but the class map has "
                           f"{num_classes} classes")
    return label


def bytes_file(data: bytes):
    return io.BytesIO(data)
