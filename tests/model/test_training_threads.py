"""`lookalike train --threads 2` on a busy machine: OpenMP's idle threads must sleep, not spin.

torch's intra-op pool is libgomp, which spins idle threads by default and reads OMP_WAIT_POLICY once, when
torch loads: the CLI sets PASSIVE before any command can import torch, unless the user chose a policy.
(benchmarks/bench_train_threads.py measures what spinning cost: `train --threads 2` 20x slower than one thread.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import sys, os, lookalike_cli.cli.main; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"


@pytest.mark.parametrize("chosen, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_cli_makes_openmp_threads_sleep_unless_the_user_chose(chosen, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if chosen:
        env["OMP_WAIT_POLICY"] = chosen
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Set, and torch not loaded yet: libgomp reads the policy when torch loads, so it must come first.
    assert done.stdout.split() == [expected, "False"]
