"""`marketplace.stop_signals`: a serving process's main thread waits for SIGTERM or SIGINT
through a pipe, so a signal is never lost and the handler takes no lock (an Event set from a
handler can deadlock the thread it interrupts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PROGRAM = textwrap.dedent("""
    import os, signal, threading, time
    from marketplace.stop_signals import StopSignals

    stop = StopSignals()
    os.kill(os.getpid(), signal.SIGTERM)  # before anyone waits: kept in the pipe
    print("got", signal.Signals(stop.wait()).name, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # while stopping: changes nothing
    time.sleep(0.1)
    waiting = StopSignals()
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()  # while waiting
    print("got", signal.Signals(waiting.wait()).name, flush=True)
""")


def test_a_stop_signal_is_kept_until_waited_for_and_a_second_one_changes_nothing():
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["got SIGTERM", "got SIGINT"]
