"""Seeded damage to real files, for the bad-data and fuzz tests, and a scripted stand-in decoder.

Every mutation is a pure function of (bytes, random.Random): the same seed gives the same damaged file.
"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# generic mutations
# --------------------------------------------------------------------------------------------------


def bit_flips(data: bytes, rng: random.Random, n: int | None = None) -> bytes:
    d = bytearray(data)
    for _ in range(n or rng.randint(1, 16)):
        i = rng.randrange(len(d))
        d[i] ^= 1 << rng.randrange(8)
    return bytes(d)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, max(1, len(data) - 1))]


def junk_run(data: bytes, rng: random.Random, lo: int = 0) -> bytes:
    d = bytearray(data)
    i = rng.randrange(min(lo, len(d) - 1), len(d))
    n = rng.randint(1, 64)
    d[i:i + n] = bytes(rng.randrange(256) for _ in range(n))
    return bytes(d)


def big_number(data: bytes, rng: random.Random) -> bytes:
    """Overwrite 4 or 8 bytes with a large or extreme integer (sizes, counts, offsets)."""
    d = bytearray(data)
    width = rng.choice((4, 8))
    if len(d) <= width:
        return bytes(d)
    i = rng.randrange(len(d) - width)
    value = rng.choice((0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, rng.randrange(2**(8 * width))))
    d[i:i + width] = (value % 2**(8 * width)).to_bytes(width, rng.choice(("little", "big")))
    return bytes(d)


def duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 256))
    return data[:j] + data[i:j] * rng.randint(1, 4) + data[j:]


GENERIC = (bit_flips, truncate, junk_run, big_number, duplicate_chunk)


def zip_member(data: bytes, rng: random.Random) -> bytes:
    """Damage the content of one member of a zip (npz, torch checkpoint) and re-pack it with valid CRCs,
    so the damage reaches the reader behind the zip layer; mostly near the member's start (headers)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [(i, zf.read(i)) for i in zf.infolist()]
    except Exception:  # noqa: BLE001 - not a (complete) zip: damage the bytes instead
        return bit_flips(data, rng)
    k = rng.randrange(len(members))
    info, content = members[k]
    if content:
        if rng.random() < 0.6:  # the header region of an .npy / pickle
            head = content[:128]
            content = mutate(head, rng, (bit_flips, big_number, junk_run)) + content[128:]
        else:
            content = mutate(content, rng)
    members[k] = (info, content)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i, c in members:
            zf.writestr(i, c, compress_type=i.compress_type)
    return out.getvalue()


def json_values(data: bytes, rng: random.Random) -> bytes:
    """Replace values of a JSON object with values of the wrong kind or size."""
    import json

    try:
        obj = json.loads(data)
    except ValueError:
        return bit_flips(data, rng)
    if not isinstance(obj, dict) or not obj:
        return bit_flips(data, rng)
    weird = [None, -1, 0, 2**63, 1e308, float("nan"), "8", [8], {"a": 1}, True, 10**12]
    for _ in range(rng.randint(1, 3)):
        obj[rng.choice(sorted(obj))] = rng.choice(weird)
    if rng.random() < 0.2:
        obj = rng.choice([[obj], "text", 3])
    return json.dumps(obj).encode()


def mutate(data: bytes, rng: random.Random, ops=GENERIC, rounds: int | None = None) -> bytes:
    for _ in range(rounds or rng.randint(1, 3)):
        if not data:
            break
        data = rng.choice(ops)(data, rng)
    return data


# --------------------------------------------------------------------------------------------------
# JPEG-aware damage (the kinds a scraped or half-copied ImageNet holds)
# --------------------------------------------------------------------------------------------------
def _sos(d: bytes) -> int:
    i = d.find(b"\xff\xda")
    return i if i > 0 else len(d) // 3


def _sof(d: bytes) -> int:
    for m in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        i = d.find(m)
        if i > 0:
            return i
    return -1


def jpeg_truncated(d: bytes, rng: random.Random) -> bytes:
    """Cut inside the entropy-coded data: DALI's decoder refuses it ("premature end")."""
    s = _sos(d)
    return d[: rng.randrange(s + 16, max(s + 17, len(d) * 3 // 4))]


def jpeg_header(d: bytes, rng: random.Random) -> bytes:
    """Junk in the header segments (quantisation/Huffman tables, markers)."""
    d = bytearray(d)
    s = _sos(d)
    for _ in range(rng.randint(1, 8)):
        d[rng.randrange(2, s)] = rng.randrange(256)
    return bytes(d)


def jpeg_entropy_junk(d: bytes, rng: random.Random) -> bytes:
    return junk_run(d, rng, lo=_sos(d) + 20)


def jpeg_sof_size(d: bytes, rng: random.Random) -> bytes:
    """Rewrite the frame size to 0 or past JPEG's limit (both refused before any pixel is decoded)."""
    d = bytearray(d)
    i = _sof(d)
    h, w = rng.choice([(0, 0), (65535, 65535), (0, 500), (65535, 7)])
    d[i + 5:i + 7] = h.to_bytes(2, "big")
    d[i + 7:i + 9] = w.to_bytes(2, "big")
    return bytes(d)


def jpeg_declare_size(d: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its frame header (SOF) declaring ``width`` x ``height`` pixels: the header lies,
    the entropy-coded data is the original's (how a damaged real photo declared 6081 x 43406)."""
    d = bytearray(d)
    i = _sof(d)
    if i < 0:
        raise ValueError("no SOF marker: not a baseline/progressive JPEG")
    d[i + 5:i + 7] = int(height).to_bytes(2, "big")
    d[i + 7:i + 9] = int(width).to_bytes(2, "big")
    return bytes(d)


def jpeg_absurd_size(d: bytes, rng: random.Random) -> bytes:
    """A plausible-looking but absurd declared size (tens of thousands of pixels a side)."""
    w, h = rng.choice([(6081, 43406), (43406, 6081), (30000, 30000), (65000, 2000)])
    return jpeg_declare_size(d, w, h)


JPEG_DAMAGE = {"bitflip": bit_flips, "truncated": jpeg_truncated, "header": jpeg_header,
               "entropy": jpeg_entropy_junk, "sofsize": jpeg_sof_size, "absurd": jpeg_absurd_size}
# kinds that can never decode (the others sometimes still do, with garbage pixels)
JPEG_ALWAYS_BAD = ("truncated", "sofsize", "absurd")  # absurd: over the check's pixel limit


def damaged_jpeg_folder(root: Path, samples: list[Path], per_kind: int, clean: int, seed: int = 0) -> dict:
    """``root/<kind>/<n>.jpg`` damaged copies of ``samples`` plus ``root/clean``; returns {kind: [paths]}."""
    rng = random.Random(seed)
    made: dict[str, list[str]] = {}
    for k, (kind, fn) in enumerate(JPEG_DAMAGE.items()):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for j in range(per_kind):
            src = samples[(k * per_kind + j) % len(samples)]
            path = root / kind / f"{j:03d}_{src.name}"
            path.write_bytes(fn(src.read_bytes(), rng))
            made.setdefault(kind, []).append(str(path))
    (root / "clean").mkdir(parents=True, exist_ok=True)
    for j in range(clean):
        src = samples[j % len(samples)]
        path = root / "clean" / f"{j:03d}_{src.name}"
        path.write_bytes(src.read_bytes())
        made.setdefault("clean", []).append(str(path))
    return made


# --------------------------------------------------------------------------------------------------
# a scripted decoder for the worker pool (picklable: a module-level function)
# --------------------------------------------------------------------------------------------------
def scripted_decode(datas) -> None:
    """Decodes nothing; obeys the first bytes of each file: BAD -> a DALI-like error naming the sample,
    CRASH -> SIGSEGV, HANG -> sleep forever, FLAKY:<path> -> SIGSEGV once (while <path> exists, which
    it removes): a crash of the process state that a retry does not repeat."""
    for i, d in enumerate(datas):
        head = bytes(d[:1024])
        if head.startswith(b"BAD"):
            raise RuntimeError(f"Critical error in pipeline:\nencountered:\n\nFailed to decode sample #{i} : scripted")
        if head.startswith(b"CRASH"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if head.startswith(b"HANG"):
            time.sleep(3600)
        if head.startswith(b"FLAKY:"):
            flag = head[6:].split(b"\n")[0].decode()
            if os.path.exists(flag):
                os.unlink(flag)
                os.kill(os.getpid(), signal.SIGSEGV)
