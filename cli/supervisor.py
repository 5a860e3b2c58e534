"""The one-box supervisor: child processes (API, worker) each in its own process group, restarted with
exponential backoff when they die (an out-of-memory kill of the worker must not take the API and S3
down with it), their logs rotated by size, and everything stopped on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich.console import Console

from service.embedded import ServerProcess

STOP_GRACE_S = 15
# The API writes a line per request: a hundred clients polling once a second fill a gigabyte a day.
LOG_MAX_BYTES = 20 * 2**20
LOG_BACKUPS = 3
TAIL_BYTES = 64 * 2**10


class Stop(Exception):
    """Raised by the signal handler so that whatever is running unwinds into the cleanup."""


@dataclass(frozen=True)
class Backoff:
    """Delay before restart n of a child that keeps dying: first_s, doubled each time, at most max_s.
    A child that ran for stable_after_s before dying starts again from first_s."""

    first_s: float = 1.0
    max_s: float = 30.0
    stable_after_s: float = 60.0

    def delay(self, consecutive: int) -> float:
        return min(self.max_s, self.first_s * 2 ** max(0, consecutive - 1))


def _load_libc():
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: children just lack the parent-death signal
        return None


# Loaded here, in the parent: between fork and exec the child only makes the one prctl call.
_LIBC = _load_libc()
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `xraysynth run` itself is killed without a chance to clean up."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _popen(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,  # noqa: PLW1509 — one prctl call, no locks
        )


def rotate_log(path: Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """Past max_bytes: path.1 … path.<backups> shift down, a copy of the log becomes path.1 and the log is
    emptied in place (logrotate's copytruncate). Its writer keeps its descriptor, opened for appending,
    so its next line lands at the start of the emptied file; a line written between the copy and the
    truncation is lost."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        for n in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{n}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{n + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        os.truncate(path, 0)
    except OSError:
        return False  # a full or vanished disk: the service goes on, the next check tries again
    return True


def tail_lines(path: Path, n: int = 15) -> str:
    """The last n lines, read from the file's end: a log can be many megabytes."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - TAIL_BYTES))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    consecutive_failures: int = 0
    restart_at: float | None = None  # set while it is down and waiting out its backoff

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        # Each child leads its own process group (start_new_session): this reaches its own
        # children too (a prefork pool, an encode pool) and nothing else.
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def tail(self, n: int = 15) -> str:
        return tail_lines(self.log_path, n)

    def note(self, line: str) -> None:
        """The supervisor's word in the child's own log, where someone reading it looks first."""
        try:
            with open(self.log_path, "a") as log:
                log.write(f"{datetime.now().isoformat(timespec='seconds')} supervisor: {line}\n")
        except OSError:
            pass


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
    log_path = log_dir / f"{name}.log"
    return Child(name, args, env, log_path, _popen(args, env, log_path))


# Called with (child, exit description, delay before the restart) when a child dies, and with
# (child, None, 0) once it has been started again.
RestartHook = Callable[[Child, str | None, float], None]


@dataclass
class Supervisor:
    console: Console
    children: list[Child] = field(default_factory=list)
    servers: list[ServerProcess] = field(default_factory=list)  # embedded SeaweedFS / redis-server
    backoff: Backoff = field(default_factory=Backoff)
    on_restart: RestartHook | None = None
    log_max_bytes: int = LOG_MAX_BYTES
    stopping: bool = False
    force: bool = False

    deferred: int | None = None
    _critical: int = 0

    def on_signal(self, signum, _frame) -> None:
        if self.stopping:
            self.force = True  # a second Ctrl-C: stop waiting politely
            return
        if self._critical:
            self.deferred = signum  # mid-spawn: raise once the process is on the list we clean up
            return
        self.stopping = True
        raise Stop(signal.Signals(signum).name)

    @contextmanager
    def critical(self):
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self.deferred is not None:
            self.on_signal(self.deferred, None)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.on_signal)

    def start(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Child:
        with self.critical():
            child = spawn(name, args, env, log_dir)
            self.children.append(child)
        return child

    # -- restarts ---------------------------------------------------------------------------------

    def check_children(self, now: float | None = None) -> None:
        """One supervision step: schedule a restart for each child that died, start those whose
        backoff is over. Never blocks, so one child's backoff does not delay watching the others."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if self.stopping:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._restart(child, now)
            elif not child.alive():
                self._schedule(child, now)

    def _schedule(self, child: Child, now: float) -> None:
        how = describe_exit(child.proc.returncode)
        child.signal_group(signal.SIGKILL)  # whatever it left behind in its group (an encode pool)
        up = now - child.started_at
        child.consecutive_failures = 1 if up >= self.backoff.stable_after_s else child.consecutive_failures + 1
        delay = self.backoff.delay(child.consecutive_failures)
        child.restart_at = now + delay
        line = f"{child.name} (pid {child.proc.pid}) {how} after {up:.0f} s up; restart {child.restarts + 1} in {delay:.0f} s"
        self.console.print(f"[red]{line}[/]. Last lines of {child.log_path}:\n{child.tail()}")
        child.note(line)
        if self.on_restart:
            self.on_restart(child, how, delay)

    def _restart(self, child: Child, now: float) -> None:
        with self.critical():
            child.proc = _popen(child.args, child.env, child.log_path)
            child.started_at, child.restart_at = now, None
            child.restarts += 1
        line = f"{child.name} restarted (pid {child.proc.pid}, restart {child.restarts})"
        self.console.print(f"[yellow]{line}[/]")
        child.note(line)
        if self.on_restart:
            self.on_restart(child, None, 0.0)

    def rotate_logs(self) -> int:
        """Rotate every log this supervisor's processes write (children and embedded servers) that grew
        past the limit; how many were."""
        rotated = 0
        for path in [c.log_path for c in self.children] + [s.log_path for s in self.servers]:
            if rotate_log(path, max_bytes=self.log_max_bytes):
                rotated += 1
                self.console.print(f"[dim]rotated {path} (over {self.log_max_bytes:,} bytes; older copies {path.name}.1…"
                                   f"{path.name}.{LOG_BACKUPS})[/]")
        return rotated

    # -- stop -------------------------------------------------------------------------------------

    def stop_all(self) -> None:
        self.stopping = True
        for child in reversed(self.children):
            if child.alive():
                child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in reversed(self.children):
            while child.alive() and time.monotonic() < deadline and not self.force:
                time.sleep(0.1)
            if child.alive():
                why = "second signal" if self.force else f"still running after {STOP_GRACE_S}s"
                self.console.print(f"[yellow]{child.name}: {why}; killing it[/]")
            child.signal_group(signal.SIGKILL)  # also reaps any grandchild left in its group
            child.proc.wait()
        for server in reversed(self.servers):  # after the API and worker: they use these until the end
            server.stop()
            try:
                os.killpg(server.proc.pid, signal.SIGKILL)  # its own group (start_new_session): only it
            except ProcessLookupError:
                pass

    def names(self) -> list[str]:
        return [s.name for s in self.servers] + [c.name for c in self.children]
