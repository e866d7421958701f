"""One BLAS thread for the ads steps.

On a shared 2-core machine numpy's threaded matmuls (sklearn's MLP classifier, TF-IDF products)
oversubscribe the cores: the stage-1 classifier took 180 s with default threads, 8 s with one.
"""

from __future__ import annotations

import functools


def single_blas_thread(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return func(*args, **kwargs)

    return wrapper
