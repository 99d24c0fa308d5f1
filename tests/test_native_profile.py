"""`benchmarks.native_profile`: perf's report is put down to kinds of library, and a real
`perf record` of a busy Python process finds the interpreter (where perf can sample)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from benchmarks.native_profile import PerfRecorder, available, parse_shares, shares

BY_LIBRARY = """\
# Overhead  Shared Object
# ........  ..............................................
#
    47.23%  libpython3.11.so.1.0
    24.00%  [kernel.kallsyms]
    10.77%  cygrpc.cpython-311-x86_64-linux-gnu.so
     6.26%  libc.so.6
     3.35%  libsqlite3.so.0.8.6
     2.58%  _sodium.abi3.so
     2.52%  _message.abi3.so
     0.97%  libcrypto.so.3
     0.27%  ld-linux-x86-64.so.2
"""
BY_SYMBOL = """\
# Overhead  Symbol
     9.10%  [k] finish_task_switch.isra.0
     8.00%  [.] _PyEval_EvalFrameDefault
     3.68%  [k] _raw_spin_unlock_irqrestore
     1.68%  [k] iowrite16
"""


def test_each_library_is_put_down_to_its_kind():
    found = parse_shares(BY_LIBRARY, BY_SYMBOL)
    assert found == {"interpreter": 0.4723, "kernel": 0.24, "grpc": 0.1077, "sqlite": 0.0335,
                     "libsodium": 0.0258, "protobuf": 0.0252, "libc": 0.0653,
                     "other": 0.0097, "switching": 0.1278}
    assert sum(v for k, v in found.items() if k != "switching") == pytest.approx(0.9795)


def test_an_empty_report_is_all_zero():
    assert set(parse_shares("", "").values()) == {0.0}


@pytest.mark.skipif(bool(available()), reason=f"perf cannot sample here: {available()}")
def test_perf_finds_a_busy_python_process_in_the_interpreter(tmp_path):
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.time() + 20\n"
                             "while time.time() < end: sum(range(1000))"])
    try:
        perf = PerfRecorder(tmp_path)
        data = perf.start("busy", busy.pid)
        time.sleep(1.5)
        perf.stop()
    finally:
        busy.kill()
        busy.wait()
    found = shares(data)
    assert found["interpreter"] > 0.5, found
