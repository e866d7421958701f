"""One BLAS/OpenMP thread for small fits.

On a shared 2-core machine threaded matmuls and OpenMP loops oversubscribe the cores: sklearn's MLP
classifier in the ads steps took 180 s with default threads and 8 s with one; a seed's k-means and
the blend's small logistic regressions are several times slower with threads than without.

threadpoolctl finds the thread pools by resolving the path of every loaded shared library (about
0.17 s with scikit-learn, LightGBM and FAISS loaded). The controller is kept and made again only
when the set of loaded libraries changed, so a command that limits threads twice pays once.
"""

from __future__ import annotations

import functools
import threading

_lock = threading.Lock()
_cached: tuple = (None, None)  # (the loaded libraries it was made for, ThreadpoolController)


def loaded_libraries() -> frozenset | None:
    """Paths of the shared libraries mapped into this process (None where /proc is not available)."""
    try:
        with open("/proc/self/maps") as maps:
            return frozenset(line.rsplit(None, 1)[-1] for line in maps if ".so" in line)
    except OSError:
        return None


def controller():
    from threadpoolctl import ThreadpoolController

    global _cached
    libraries = loaded_libraries()
    with _lock:
        known, made = _cached
        if made is None or libraries is None or libraries != known:
            made = ThreadpoolController()
            _cached = (libraries, made)
        return made


def one_thread():
    """Context manager: every BLAS and OpenMP pool of the process limited to one thread inside it."""
    return controller().limit(limits=1)


def single_thread(func):
    """Decorator: `func` runs under one_thread()."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with one_thread():
            return func(*args, **kwargs)

    return wrapper
