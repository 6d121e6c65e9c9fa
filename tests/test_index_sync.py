"""The index files follow SQLite: an IVF index retrains when the library outgrows it."""

from __future__ import annotations

import numpy as np

from vitdex.index.sync import _outgrown
from vitdex.index.vector_index import VectorIndex, default_nlist


def test_ivf_index_trained_small_is_outgrown_by_a_much_larger_library():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    index = VectorIndex.build(np.arange(2000), vectors, kind="ivfsq8", calibrate=False)
    assert not _outgrown(index, 2000)
    big = next(n for n in range(2000, 10**8, 1000) if default_nlist(n) > 2 * index.params["nlist"])
    assert _outgrown(index, big) and not _outgrown(index, big // 4)
    flat = VectorIndex.build(np.arange(2000), vectors, kind="flat")
    assert not _outgrown(flat, 10**7)
