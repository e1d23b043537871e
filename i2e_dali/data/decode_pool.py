"""Decode checks in isolated worker processes: a damaged file can kill a worker, never the caller.

DALI's CPU image decoder can crash its process (SIGSEGV) when a pipeline is built and run after an
earlier decode error in the same process (docs/guides/bad-data.md); a hostile file may also hang the decoder
or make it allocate until the OOM killer comes. So decoding runs in child processes:

- one long-lived worker per usable core (each a one-thread DALI CPU pipeline), fed chunks of files
  decoded as one DALI batch (the fast path: a clean data set never leaves it). Each file is decoded the
  ways the loader's views decode it: whole (evaluation, Baseline-I) and through the random-crop ROI
  decoder of the training view (``decoders.image_random_crop``, same area and aspect ranges), whose
  verdicts can differ: a header declaring 6081 x 43406 pixels decodes whole and breaks the crop window;
- before DALI sees a file, its declared size is read from the header (PIL's lazy open: no pixel is
  decoded) and a file declaring more than ``max_pixels`` pixels is refused, like PIL's
  decompression-bomb guard (an absurd size would have DALI allocate gigabytes, or overflow);
- a worker that meets a decode error reports it and exits at once, so every live worker has never
  seen an error (the state the crash needs); a fresh worker takes its place;
- DALI names the failing sample ("Failed to decode sample #k"): that file is bad. The undecided rest
  of the chunk is redone *carefully* in a fresh worker: one file per DALI run, each announced before it
  is decoded, so no file is decoded more than twice and the next error, crash or hang is pinned on one
  file (this replaces bisection: the announcement names the file in one step);
- a worker that dies (signal, abort, OOM) or overruns its time loses only its chunk: a batch is redone
  carefully; in a careful chunk the file being decoded is the suspect. It is retried alone in a fresh
  worker and named "crashes the decoder" only after it killed two workers, so a crash of the process
  state alone never names an innocent file. A careful file past ``time_limit`` is a "decoder hang".

The workers are managed by a helper: a fresh interpreter (never a fork of the caller, which may hold
CUDA or DDP state, and never a re-import of the caller's main script, which multiprocessing's spawn and
forkserver would do) that imports DALI once and forks each worker from itself, so replacing a worker
costs a fork and a pipeline build, not an interpreter start. The helper never decodes; it reports
progress and the result to the caller over a pipe.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from tqdm import tqdm

__all__ = ["DecodePool", "DEFAULT_TIME_LIMIT", "DEFAULT_MAX_PIXELS", "DEFAULT_CROP", "declared_pixels", "over_limit",
           "limit_reason"]

DEFAULT_TIME_LIMIT = 60.0  # seconds one image may take before its decoder counts as hung
# PIL's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS: a 0.25 GiB RGB image); ImageNet's largest
# photo is far below it
DEFAULT_MAX_PIXELS = 89_478_485
# torchvision's RandomResizedCrop ranges, the training view's defaults (pipelines/folder.py)
DEFAULT_CROP = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
_PER_FILE_SLACK = 0.5  # a whole batch gets the time limit plus this per file; a careful file the limit alone
_STARTUP_LIMIT = 300.0  # a worker that cannot even build its pipeline in this time is an environment problem
_SAMPLE_RE = re.compile(r"sample #(\d+)")


# ------------------------------------------------------------------------------------------------
# the worker side (runs in the child)
# ------------------------------------------------------------------------------------------------
def _build_pipeline(batch_size: int, num_threads: int, crop):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=None, seed=0,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def pipe():
        enc = fn.external_source(name="enc", dtype=types.UINT8, ndim=1)
        whole = fn.decoders.image(enc, device="cpu", output_type=types.RGB)
        outs = [whole.shape()]  # keep the output tiny: only "did it decode" matters
        if crop is not None:  # the training view's ROI decode (its own window maths and scanline skipping)
            area, ratio = crop
            part = fn.decoders.image_random_crop(enc, device="cpu", output_type=types.RGB, random_area=list(area),
                                                 random_aspect_ratio=list(ratio), num_attempts=10)
            outs.append(part.shape())
        return tuple(outs)

    p = pipe()
    p.build()
    return p


def _quiet_child() -> None:
    """In a worker: die with the helper (Linux), and drop the decoder's per-file chatter on stderr (the
    reasons reach the report anyway)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def declared_pixels(data) -> tuple[int, int] | None:
    """``(width, height)`` an image's header declares, read without decoding a pixel; None when no PIL
    plugin parses the header (DALI then decides alone). The plugins are tried the way ``Image.open``
    tries them, but without its decompression-bomb check, which would hide the size behind its own
    (fixed) limit: the limit here is ours."""
    import io

    from PIL import Image

    Image.init()
    head = bytes(data[:16])
    for fmt in Image.ID:
        try:
            factory, accept = Image.OPEN[fmt]
            if accept is not None and not accept(head):
                continue
            im = factory(io.BytesIO(bytes(data)), None)
        except Exception:  # noqa: BLE001 - not this format, or a header PIL cannot parse: try the next one
            continue
        try:
            return tuple(int(v) for v in im.size)
        finally:
            im.close()
    return None


def over_limit(data, max_pixels: int | None) -> str | None:
    """The reason a file is refused for its declared size, or None."""
    if not max_pixels:
        return None
    size = declared_pixels(data)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return limit_reason(size[0], size[1], max_pixels)


def limit_reason(width: int, height: int, max_pixels: int) -> str:
    """Why a declared ``width`` x ``height`` is refused (the check's and the loader's wording)."""
    w, h = int(width), int(height)
    return (f"declares {w} x {h} pixels ({w * h:,} > the limit of {max_pixels:,}; set I2E_DALI_MAX_PIXELS or "
            "--max-pixels to allow it)")


def _serve(conn, batch_size: int, num_threads: int, decode_fn, max_pixels: int | None = None, crop=None) -> None:
    """Worker loop. Receives ``(paths, careful)``. A batch (careful=False) is decoded in one DALI run and
    answered ("ok", results); a careful task is decoded one file per run, announcing ("at", i) before
    file i, so a crash or hang is pinned on the file being decoded. A decode error is answered
    ("error", results, undecided, index, message) and the worker exits."""
    import numpy as np

    _quiet_child()
    if decode_fn is None:
        pipe = _build_pipeline(batch_size, num_threads, crop)

        def decode(datas):
            pipe.feed_input("enc", datas)
            pipe.run()
    else:
        decode = decode_fn
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            break
        if msg is None:
            break
        paths, careful = msg
        results: list[tuple[str, str | None]] = []
        todo, datas = [], []
        for path in paths:
            try:
                data = np.fromfile(path, dtype=np.uint8)
            except OSError as exc:
                results.append((path, f"cannot read: {exc}"))
                continue
            if data.size == 0:
                results.append((path, "empty (zero-byte) file"))
                continue
            refused = over_limit(data, max_pixels)
            if refused is not None:  # never handed to DALI
                results.append((path, refused))
                continue
            todo.append(path)
            datas.append(data)
        start = 0
        try:
            if careful:
                for start in range(len(datas)):
                    conn.send(("at", todo[start]))
                    decode([datas[start]])
                    results.append((todo[start], None))
            elif datas:
                decode(datas)
                results += [(p, None) for p in todo]
        except Exception as exc:  # noqa: BLE001 - DALI raises RuntimeError subclasses; the parent decides
            message = str(exc)
            if careful:
                undecided, index = todo[start:], 0
            else:
                m = _SAMPLE_RE.search(message)
                undecided = todo
                index = int(m.group(1)) if m and int(m.group(1)) < len(todo) else None
            conn.send(("error", results, undecided, index, message))
            conn.close()
            # This process has seen a decode error: its decoder state is what crashes DALI. Leave now,
            # without running any destructor.
            os._exit(0)
        conn.send(("ok", results))
    conn.close()
    os._exit(0)


# ------------------------------------------------------------------------------------------------
# the parent side
# ------------------------------------------------------------------------------------------------
@dataclass
class _Task:
    paths: list[str]
    careful: bool = False  # one file per DALI run, each announced (after a batch failed)
    crashes: int = 0  # workers this task's first file has killed


@dataclass
class _Worker:
    proc: object
    conn: object
    ready: bool = False
    task: _Task | None = None
    at: str | None = None  # the file a careful task is decoding now
    settled: set = field(default_factory=set)  # files of the careful task already decoded
    deadline: float = 0.0
    started: float = field(default_factory=time.monotonic)


def _reason(why) -> str:
    if isinstance(why, tuple) and why[0] == "dali":
        from .sources import dali_error_detail

        return f"cannot be decoded (DALI: {dali_error_detail(why[1]) or 'decode error'})"
    return str(why)


def _context():
    # In the helper: a clean process with DALI imported and no pipeline built, so forking it is safe and
    # cheap. (DALI runs on Linux only, where fork exists.)
    return mp.get_context("fork")


def _death(proc) -> str:
    code = proc.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (likely out of memory)" if -code == signal.SIGKILL else ""
        return f"the decoding process died with {name}{hint}"
    return f"the decoding process exited with code {code}"


class DecodePool:
    """Decode files in ``num_workers`` isolated processes; ``run(files)`` returns ``(path, reason)`` for
    every file that cannot be decoded, read, or that crashes or hangs the decoder."""

    def __init__(self, num_workers: int = 1, *, batch_size: int = 32, time_limit: float = DEFAULT_TIME_LIMIT,
                 threads_per_worker: int = 1, decode_fn=None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 crop=DEFAULT_CROP):
        if num_workers < 1 or batch_size < 1 or threads_per_worker < 1:
            raise ValueError("num_workers, batch_size and threads_per_worker must be >= 1")
        if not time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {time_limit}")
        self.num_workers = int(num_workers)
        self.batch_size = int(batch_size)
        self.time_limit = float(time_limit)
        self.threads = int(threads_per_worker)
        self.decode_fn = decode_fn  # a picklable callable(list of uint8 arrays): tests simulate crashes/hangs
        self.max_pixels = int(max_pixels) if max_pixels else None  # None / 0: no size limit
        self.crop = None if crop is None else (tuple(map(float, crop[0])), tuple(map(float, crop[1])))
        self.workers_started = 0
        self.workers_lost = 0  # died or killed (crash, hang), not counting the planned exits after errors
        self._ctx = _context()

    # -- workers --------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child, self.batch_size, self.threads, self.decode_fn,
                                                      self.max_pixels, self.crop),
                                 daemon=True, name="i2e-decode-check")
        proc.start()
        child.close()
        self.workers_started += 1
        return _Worker(proc, parent)

    @staticmethod
    def _retire(w: _Worker, kill: bool = False) -> None:
        if kill and w.proc.is_alive():
            w.proc.kill()
        w.proc.join(timeout=30)
        w.conn.close()

    # -- the run --------------------------------------------------------------------------------
    def run(self, files: list[str], *, progress: bool | None = None) -> list[tuple[str, str]]:
        """Check ``files`` through the helper process; a progress bar counts files as they are settled."""
        files = [str(f) for f in files]
        if not files:
            return []
        settings = dict(num_workers=self.num_workers, batch_size=self.batch_size, time_limit=self.time_limit,
                        threads_per_worker=self.threads, decode_fn=self.decode_fn, max_pixels=self.max_pixels,
                        crop=self.crop)
        # The helper loads this file alone, not the package: no torch import, so it starts in about a second.
        boot = ("import importlib.util as u, sys; s = u.spec_from_file_location('_i2e_decode_pool', sys.argv[1]); "
                "m = u.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); m._helper_main()")
        helper = subprocess.Popen([sys.executable, "-c", boot, __file__], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        bar = tqdm(total=len(files), desc="decoding", unit="img", disable=True if progress is False else None)
        try:
            pickle.dump(sys.path, helper.stdin)
            pickle.dump((settings, files), helper.stdin)
            helper.stdin.close()
            while True:
                try:
                    msg = pickle.load(helper.stdout)
                except EOFError:
                    helper.wait()
                    raise RuntimeError(f"the decode-check helper process died (exit code {helper.returncode}) "
                                       "before it finished") from None
                if msg[0] == "progress":
                    bar.update(msg[1])
                elif msg[0] == "done":
                    _, bad, self.workers_started, self.workers_lost = msg
                    helper.wait()
                    return [(path, _reason(why)) for path, why in bad]
                else:
                    raise RuntimeError(f"decode check failed: {msg[1]}")
        finally:
            bar.close()
            if helper.poll() is None:
                helper.kill()
                helper.wait()

    def _run_here(self, files: list[str], report) -> list[tuple[str, object]]:
        """The pool itself (runs in the helper); ``report(n)`` counts settled files."""
        queue = collections.deque(_Task(files[i:i + self.batch_size]) for i in range(0, len(files), self.batch_size))
        bad: dict[str, str] = {}
        workers: list[_Worker] = []
        self._max_lost = 3 * len(files) + 10  # each file may kill at most 3 workers (batch, careful, alone)
        try:
            while queue or any(w.task for w in workers):
                # one worker per core while there is work for it (a lost worker is replaced here)
                idle = sum(1 for w in workers if w.task is None)
                while len(workers) < self.num_workers and len(queue) > idle:
                    workers.append(self._spawn())
                    idle += 1
                for w in workers:  # hand out work to idle, ready workers
                    if w.ready and w.task is None and queue:
                        w.task, w.at, w.settled = queue.popleft(), None, set()
                        slack = 0.0 if w.task.careful else _PER_FILE_SLACK * len(w.task.paths)
                        w.deadline = time.monotonic() + self.time_limit + slack
                        w.conn.send((w.task.paths, w.task.careful))
                now = time.monotonic()
                timeouts = [w.deadline - now for w in workers if w.task] + [1.0]
                wait([w.conn for w in workers] + [w.proc.sentinel for w in workers], timeout=max(0.0, min(timeouts)))
                workers = [w for w in workers if not self._poll(w, queue, bad, report)]
        finally:
            for w in workers:
                try:
                    w.conn.send(None)
                except (OSError, ValueError):
                    pass
            for w in workers:
                self._retire(w, kill=False)
        return [(f, bad[f]) for f in files if f in bad]

    def _poll(self, w: _Worker, queue, bad: dict, report) -> bool:
        """Read all worker ``w`` has said; return True when it is gone (and its task back in the queue)."""
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "ready":
                w.ready = True
            elif kind == "at":
                if w.at is not None:
                    w.settled.add(w.at)
                    report(1)
                w.at = msg[1]
                w.deadline = time.monotonic() + self.time_limit  # the per-file limit
            elif kind == "ok":
                for path, why in msg[1]:
                    if why is not None:
                        bad[path] = why
                report(len(w.task.paths) - len(w.settled))
                w.task, w.at = None, None
            elif kind == "error":
                _, results, undecided, index, detail = msg
                for path, why in results:
                    if why is not None:
                        bad[path] = why
                task, w.task = w.task, None
                self._retire(w)
                self._after_error(task, len(w.settled), results, undecided, index, detail, queue, bad, report)
                return True
        if not w.proc.is_alive():
            self.workers_lost += 1
            if self.workers_lost > self._max_lost:
                raise RuntimeError(f"{self.workers_lost} decode-check workers died ({_death(w.proc)}); "
                                   "the machine, not a file, seems to be the problem (memory?)")
            self._retire(w)
            if w.task is None:
                if not w.ready:
                    raise RuntimeError(f"a decode-check worker could not start ({_death(w.proc)})")
                return True
            self._after_death(w, _death(w.proc), queue, bad, report)
            return True
        now = time.monotonic()
        if w.task is not None and now > w.deadline:
            self.workers_lost += 1
            self._retire(w, kill=True)
            self._after_death(w, f"decoder hang: no result within {self.time_limit:g} s", queue, bad, report,
                              hang=True)
            return True
        if not w.ready and now - w.started > _STARTUP_LIMIT:
            self._retire(w, kill=True)
            raise RuntimeError(f"a decode-check worker did not start within {_STARTUP_LIMIT:g} s")
        return False

    @staticmethod
    def _after_error(task, settled, results, undecided, index, detail, queue, bad, report) -> None:
        """A worker met a decode error: name the file when known, decode the rest carefully elsewhere."""
        reason = ("dali", detail)  # worded by the caller (_reason): the helper does not import the package
        if index is None and len(undecided) == 1:
            index = 0
        if index is not None:
            bad[undecided[index]] = reason
            undecided = undecided[:index] + undecided[index + 1:]
        # files answered in this message, and the culprit, are settled; careful ones announced before were
        # already counted
        report(len(task.paths) - settled - len(undecided))
        if undecided:
            queue.appendleft(_Task(undecided, careful=True))

    def _after_death(self, w: _Worker, why: str, queue, bad, report, hang: bool = False) -> None:
        """A worker died or hung: the file it was on (careful task) is the suspect; a batch is redone carefully."""
        task, w.task = w.task, None
        if not task.careful:
            queue.appendleft(_Task(task.paths, careful=True))
            return
        if w.at is None:  # died between files: nothing to blame, redo what is left
            rest = [p for p in task.paths if p not in w.settled]
            queue.appendleft(_Task(rest, careful=True, crashes=task.crashes))
            return
        suspect = w.at
        rest = [p for p in task.paths if p not in w.settled and p != suspect]
        if rest:
            queue.appendleft(_Task(rest, careful=True))
        crashes = (task.crashes if task.paths[0] == suspect else 0) + 1
        if hang or crashes >= 2:
            bad[suspect] = why if hang else f"crashes the decoder ({why})"
            report(1)
        else:
            # once more, alone, in a fresh worker before blaming the file (a crash of the state alone
            # must not name an innocent file)
            queue.appendleft(_Task([suspect], careful=True, crashes=crashes))


def _helper_main() -> None:
    """Entry point of the helper process (see the module doc): settings and files in on stdin, progress
    and the result out on stdout as pickles."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of any library go to stderr, never into the result stream
    stdin = sys.stdin.buffer
    sys.path[:] = pickle.load(stdin)
    settings, files = pickle.load(stdin)

    def send(msg):
        pickle.dump(msg, out)
        out.flush()

    try:
        import nvidia.dali.fn  # noqa: F401 - imported once here, inherited by every forked worker

        pool = DecodePool(**settings)
        bad = pool._run_here(files, lambda n: send(("progress", n)))
        send(("done", bad, pool.workers_started, pool.workers_lost))
    except Exception as exc:  # noqa: BLE001 - reported to the caller, who raises it
        send(("failed", f"{type(exc).__name__}: {exc}"))
    out.close()
