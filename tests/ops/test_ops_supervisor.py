"""The one-box supervisor's restart rule with real child processes: a child that dies is started
again after a backoff that doubles while it keeps dying (capped), starts from the first delay again
once it stayed up, and each death and restart is written to the console and to the child's log."""

from __future__ import annotations

import io
import signal
import sys
import time

from rich.console import Console

from cli.supervisor import Backoff, Supervisor


def _supervisor(**backoff) -> tuple[Supervisor, io.StringIO, list]:
    out = io.StringIO()
    seen: list = []
    sup = Supervisor(Console(file=out, width=300), backoff=Backoff(**backoff),
                     on_restart=lambda child, how, delay: seen.append((child.name, how, delay)))
    return sup, out, seen


def _until(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_backoff_doubles_up_to_its_cap():
    b = Backoff(first_s=1, max_s=30)
    assert [b.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_child_that_keeps_dying_is_restarted_with_growing_delays_and_logged(tmp_path):
    sup, out, seen = _supervisor(first_s=0.2, max_s=0.4, stable_after_s=60)
    child = sup.start("worker", [sys.executable, "-c", "import sys; sys.exit(3)"], {}, tmp_path)
    for restart in (1, 2, 3):
        _until(lambda: child.proc.poll() is not None)
        sup.check_children()
        assert child.restart_at is not None and not child.alive()
        sup.check_children()  # still within its backoff: not started yet
        assert child.restarts == restart - 1
        time.sleep(max(0.0, child.restart_at - time.monotonic()) + 0.01)
        sup.check_children()
        assert child.restarts == restart and child.restart_at is None
    assert [d for _, how, d in seen if how] == [0.2, 0.4, 0.4]  # doubled, then capped
    assert [h for _, h, _ in seen] == ["exit code 3", None] * 3
    log = (tmp_path / "worker.log").read_text()
    assert log.count("supervisor: worker (pid") == 3 and "exit code 3" in log and "restart 3 in 0 s" in log
    assert "worker restarted (pid" in out.getvalue()
    sup.stop_all()


def test_a_child_killed_after_running_a_while_starts_again_from_the_first_delay(tmp_path):
    sup, out, seen = _supervisor(first_s=0.2, max_s=5, stable_after_s=0.5)
    child = sup.start("api", [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path)
    child.consecutive_failures = 4  # it had been failing before this run
    time.sleep(0.6)  # up longer than stable_after_s
    child.signal_group(signal.SIGKILL)
    _until(lambda: child.proc.poll() is not None)
    sup.check_children()
    assert child.consecutive_failures == 1 and seen == [("api", "killed by SIGKILL", 0.2)]
    assert "killed by SIGKILL" in out.getvalue()
    sup.stop_all()
    assert not child.alive()


def test_stop_all_does_not_restart_a_child_waiting_out_its_backoff(tmp_path):
    sup, _, _ = _supervisor(first_s=0.1)
    child = sup.start("worker", [sys.executable, "-c", "pass"], {}, tmp_path)
    _until(lambda: child.proc.poll() is not None)
    sup.check_children()
    sup.stop_all()
    time.sleep(0.2)
    sup.check_children()  # after a stop: nothing comes back
    assert child.restarts == 0 and not child.alive()


def test_a_childs_log_is_rotated_by_size_and_the_child_keeps_writing_to_it(tmp_path):
    sup, out, _ = _supervisor()
    sup.log_max_bytes = 20_000
    writer = ("import itertools, sys, time\n"
              "for i in itertools.count():\n"
              "    print(f'line {i:08d} ' + 'x' * 60, flush=True); time.sleep(0.0005)\n")
    child = sup.start("api", [sys.executable, "-c", writer], {}, tmp_path)
    log = tmp_path / "api.log"
    rotations = 0
    deadline = time.monotonic() + 30
    while rotations < 5:
        assert time.monotonic() < deadline, f"{rotations} rotations in 30 s"
        rotations += sup.rotate_logs()
        assert log.stat().st_size < 100_000  # kept near the limit, whatever the child writes
        time.sleep(0.01)
    sup.stop_all()
    assert sorted(p.name for p in tmp_path.glob("api.log.*")) == ["api.log.1", "api.log.2", "api.log.3"]
    numbers = []
    for name in ("api.log.3", "api.log.2", "api.log.1", "api.log"):
        text = (tmp_path / name).read_bytes()
        assert b"\0" not in text, f"{name}: the writer kept its old offset and left a hole"
        numbers += [int(line.split()[1]) for line in text.decode().splitlines() if line.startswith("line ")]
    # Oldest to newest across the files, and the live log still receives the newest lines.
    assert numbers == sorted(numbers) and numbers[-1] > numbers[0]
    assert "rotated" in out.getvalue()
    assert child.tail(1).startswith("line ")
