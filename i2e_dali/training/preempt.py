"""Stop signals: a run told to stop (SLURM's warning before the time limit or a preemption, a torchrun agent
shutting down, ``kill -USR1``) stops at a step boundary, every rank at the same step, with one consistent
checkpoint, and exits with :data:`STOP_EXIT_CODE`.

How it works:

- :class:`StopGuard` installs a handler for each stop signal (``--stop-signals``, default SIGTERM and SIGUSR1)
  that only sets a flag: nothing is interrupted, so a signal during a checkpoint write (or a second signal)
  cannot corrupt it; checkpoints are written atomically anyway (fsio.atomic_write: temp file, fsync, rename).
- The signal may reach any one rank (``kill`` of one process) or all of them (the torchrun agent forwards
  the signal it gets to every worker; SLURM signals every task). At each step boundary the ranks agree with
  one small all-reduce (MAX of the flags). The reduce is started at one boundary and read at the next, so
  the step does not wait for it: every rank reads the same answer at the same boundary, and all stop at
  that step (one step after the signal at most). On CUDA the read waits for the previous step's work
  only, not for the step in flight.
- Then the trainer saves ``last.pt`` in the exact-resume format (model, optimiser, scaler, scheduler,
  loader and RNG state, mid-epoch position), optionally asks SLURM to requeue the job
  (``--requeue-on-signal``: ``scontrol requeue $SLURM_JOB_ID`` on rank 0), and every rank exits with
  :data:`STOP_EXIT_CODE`. ``--resume auto`` (the default under torchrun) continues from there.
- Evaluation is interruptible the same way (the ranks agree before each batch that every rank has; ranks
  may hold one batch more or less): the checkpoint then holds the trained epoch and its training numbers,
  and the resumed run evaluates it. A signal during the end-of-epoch save stops the run right after it;
  that checkpoint is already the consistent one.

Under torchrun: the agent handles SIGTERM, SIGINT, SIGHUP and SIGQUIT (``TORCHELASTIC_SIGNALS_TO_HANDLE``
adds SIGUSR1), forwards the same signal to every worker, waits 30 s, then SIGKILLs them; the workers have
stopped and saved by then (one step plus one checkpoint). A signal to one worker alone makes the workers
exit with STOP_EXIT_CODE, which the agent counts as a failure: with ``--max-restarts`` left it restarts
them, and they resume from the checkpoint just written.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import torch
import torch.distributed as dist

__all__ = ["STOP_EXIT_CODE", "TrainingStopped", "StopGuard", "requeue_command"]

log = logging.getLogger("i2e_dali.train")

# EX_TEMPFAIL (sysexits.h): "a temporary failure, the user is invited to retry" -- the run stopped on a
# signal with a consistent checkpoint; run it again with --resume auto.
STOP_EXIT_CODE = 75


class TrainingStopped(SystemExit):
    """The run stopped on a stop signal after writing its checkpoint; exits with :data:`STOP_EXIT_CODE`."""

    def __init__(self, signal_name: str, where: str, checkpoint: str | None):
        super().__init__(STOP_EXIT_CODE)
        self.signal_name, self.where, self.checkpoint = signal_name, where, checkpoint

    def __str__(self) -> str:
        saved = f"; checkpoint {self.checkpoint}" if self.checkpoint else ""
        return f"stopped on {self.signal_name} {self.where}{saved}; continue with --resume auto"


def requeue_command(environ=None) -> list[str] | None:
    """``scontrol requeue <job>`` for the SLURM job this process runs in (array tasks as ``<job>_<task>``),
    or None outside SLURM."""
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        job = env.get("SLURM_JOB_ID")
    return ["scontrol", "requeue", job] if job else None


def _signal(name: str) -> signal.Signals:
    sig = getattr(signal, str(name).upper(), None)
    if not isinstance(sig, signal.Signals) or str(name).upper().startswith("SIG_"):
        raise ValueError(f"unknown signal {name!r}")
    return sig


class StopGuard:
    """Stop signals for one training run (a context manager: handlers installed on entry, the previous ones
    restored on exit). ``signals``: names (``["SIGTERM", "SIGUSR1"]``; empty: no handler, the default
    actions stay). ``rt``: the Runtime (rank, world size, device); ``requeue``: rank 0 requeues the SLURM
    job after the stop checkpoint."""

    def __init__(self, signals, rt, *, requeue: bool = False):
        self.signals = [_signal(s) for s in (signals or [])]
        self.rt = rt
        self.requeue = bool(requeue)
        self.received: signal.Signals | None = None  # the first stop signal this process got
        self.received_at: float | None = None
        self.repeats = 0  # further stop signals while stopping (ignored: the checkpoint is being written)
        self._previous: dict = {}
        self._pending = None  # (work, flag tensor, host copy, cuda event) of the reduce in flight
        self.stopped_by: str | None = None  # the agreed reason, once agreed

    # -- handlers ---------------------------------------------------------------------------------
    def __enter__(self) -> "StopGuard":
        if not self.signals:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.warning("stop signals not handled: training runs outside the main thread (Python installs "
                        "signal handlers from the main thread only)")
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()
        self._pending = None

    def _on_signal(self, signum, frame) -> None:
        # Only flags and a raw write: the main thread may be inside the logging module or a checkpoint write.
        name = signal.Signals(signum).name
        if self.received is None:
            self.received, self.received_at = signal.Signals(signum), time.time()
            msg = (f"[rank {self.rt.rank}] {name}: stopping at the next step boundary with a checkpoint "
                   f"(exit code {STOP_EXIT_CODE})\n")
        else:
            self.repeats += 1
            msg = f"[rank {self.rt.rank}] {name} again: already stopping, the checkpoint is being written\n"
        try:
            os.write(sys.stderr.fileno(), msg.encode())
        except (OSError, ValueError, AttributeError):
            pass

    @property
    def requested(self) -> bool:
        """This process got a stop signal (not yet agreed with the other ranks)."""
        return self.received is not None

    # -- the agreement ----------------------------------------------------------------------------
    def _launch(self) -> None:
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=self.rt.device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        host = event = None
        if flag.is_cuda:  # read later without a full device sync: copy after the reduce, mark the point
            work.wait()  # the current stream waits for the reduce (no host wait)
            host = torch.empty(1, dtype=torch.int32, pin_memory=True)
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._pending = (work, flag, host, event)

    def _finish(self) -> bool:
        work, flag, host, event = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
            return bool(host.item())
        work.wait()
        return bool(flag.item())

    def poll(self) -> bool:
        """At a step boundary (every rank calls it at the same boundaries): True when the ranks agreed to
        stop here. One process: the flag itself. Under DDP: the answer of the reduce started at the previous
        boundary; a new one starts unless the answer is to stop."""
        if not self.signals:
            return False
        if not self.rt.distributed:
            return self._agreed(self.requested)
        stop = self._finish() if self._pending is not None else False
        if not stop:
            self._launch()
        return self._agreed(stop)

    def settle(self) -> bool:
        """At a phase boundary (end of the training pass, of evaluation, after the epoch's save; every rank
        calls it): finish any reduce in flight and agree once more, synchronously. True: stop now."""
        if not self.signals:
            return False
        if not self.rt.distributed:
            return self._agreed(self.requested)
        if self._pending is not None and self._finish():
            return self._agreed(True)
        self._launch()
        return self._agreed(self._finish())

    def _agreed(self, stop: bool) -> bool:
        if stop and self.stopped_by is None:
            self.stopped_by = self.received.name if self.received is not None else "another rank's stop signal"
        return stop

    def eval_guard(self, loader):
        """``should_stop(i)`` for :func:`~i2e_dali.training.engine.evaluate`: agrees before each batch that
        every rank holds (a collective: the batch count is reduced first), False for the rest."""
        if not self.signals:
            return None
        common = len(loader) if hasattr(loader, "__len__") else 0
        if self.rt.distributed:
            if self._pending is not None:  # start from a clean state: finish what the training pass left
                self._finish()
            t = torch.tensor([common], dtype=torch.int64, device=self.rt.device)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            common = int(t.item())

        def should_stop(i: int) -> bool:
            return i < common and self.poll()

        return should_stop

    # -- stopping ---------------------------------------------------------------------------------
    def at_step(self, trainer, ep, i: int) -> None:
        """After training step ``i`` (0-based) of the epoch and its scheduled checkpoint: stop here when
        the ranks agree. The epoch's last step is left to :meth:`after_training` (the pass closes first)."""
        if i + 1 < trainer.steps_per_epoch and self.poll():
            trainer._save_mid_epoch(ep)
            self._stop(trainer, f"at epoch {trainer.state.epoch + 1}, step {i + 1} of {trainer.steps_per_epoch} "
                                f"(global step {trainer.state.global_step})")

    def after_training(self, trainer, stats: dict) -> None:
        """The epoch's training pass is done, its evaluation not yet: on a stop, save the trained epoch with
        its training numbers (the resumed run evaluates it)."""
        if self.settle():
            trainer._pending_stats = stats
            trainer.save("last.pt")
            self._stop(trainer, f"after training epoch {trainer.state.epoch + 1}, before its evaluation")

    def after_evaluation(self, trainer, stats: dict, val) -> None:
        """Evaluation returned (``val`` None: it stopped part-way): on a stop, as :meth:`after_training`."""
        if val is None or self.settle():
            trainer._pending_stats = stats
            trainer.save("last.pt")
            self._stop(trainer, f"during the evaluation of epoch {trainer.state.epoch + 1} (it reruns on resume)")

    def after_epoch_save(self, trainer) -> None:
        """After the end-of-epoch checkpoint (which a signal during the write does not spoil): stop now,
        that checkpoint is the consistent one."""
        if self.settle():
            self._stop(trainer, f"after epoch {trainer.state.epoch} and its checkpoint")

    def _stop(self, trainer, where: str) -> None:
        rt = self.rt
        if rt.distributed:
            dist.barrier()  # every rank is past the save before anyone requeues or exits
        ckpt = str(trainer.output_dir / "last.pt")
        if rt.is_main:
            log.warning("stopped on %s %s; checkpoint %s; exit code %d: continue with --resume auto",
                        self.stopped_by, where, ckpt, STOP_EXIT_CODE)
            if self.requeue:
                self._requeue()
        raise TrainingStopped(self.stopped_by or "a stop signal", where, ckpt)

    @staticmethod
    def _requeue() -> None:
        cmd = requeue_command()
        if cmd is None:
            log.warning("--requeue-on-signal: not a SLURM job (no SLURM_JOB_ID): nothing to requeue")
            return
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("--requeue-on-signal: %s failed (%s); requeue the job by hand", " ".join(cmd), exc)
            return
        if res.returncode != 0:
            log.warning("--requeue-on-signal: %s exited with %d: %s", " ".join(cmd), res.returncode,
                        (res.stderr or res.stdout).strip()[-500:])
        else:
            log.info("requeued: %s", " ".join(cmd))
