"""Where the data live: in memory, streamed from disk, or on a Dask cluster.

Every solver reads the data once per iteration, as a pass over blocks of whole
spectra (rows): the coefficients of a block are updated inside the block, and
the block returns template statistics whose size does not depend on the number
of spectra (see docs/architecture.md).  An engine owns that pass
(:class:`specnmf.protocols.EngineProtocol`):

``engine.run_pass(solver, fn, C)``
    for every block of rows ``rows`` (a slice), ``block =
    solver.prepare_block(X_b, ivar_b)`` and ``part, stats = fn(rows, block,
    C[rows])``; returns ``[(rows, part), ...]`` in block order and the
    elementwise sum of all ``stats`` tuples (arrays or floats).  ``fn`` and
    ``solver`` must be picklable (cloudpickle) so that a distributed engine can
    ship them to workers; only the block's rows of ``C`` travel with a task.

``engine.plan(solver, n_components, coupled=...)``
    chooses the block size for a solver's passes before a fit or transform.

The same solver code therefore runs on

* :class:`InMemory` (:mod:`specnmf.engine.memory`) — arrays already in memory
  (numpy or any array-API namespace); validated once, prepared blocks cached
  between passes;
* :class:`Streamed` (:mod:`specnmf.engine.streamed`) — anything that can be
  sliced by rows into numpy arrays (``np.memmap``, ``h5py.Dataset``,
  ``zarr.Array``, a FITS image opened with ``memmap=True``); each pass reads,
  validates and prepares one block at a time, so peak memory is set by
  ``block_size`` and the templates;
* :class:`Packed` (:mod:`specnmf.engine.packed`) — a span-packed file
  (:func:`specnmf.io.open_packed`): each pass reads only the observed spans
  into a reused dense buffer, not validated again (the file was when packed);
* :class:`DaskEngine` (:mod:`specnmf.engine.dask`) — dask arrays chunked by
  spectra, one task per chunk and a tree reduction of the statistics (dask
  itself is imported only when such an engine is built).

:func:`make_engine` (:mod:`specnmf.engine.factory`) picks the engine for an
input; the shared pass and data summary are in :mod:`specnmf.engine.base`.
"""

from .base import DataSummary, Engine, is_lazy
from .dask import SPLIT_EVERY, DaskEngine
from .factory import make_engine
from .memory import InMemory
from .packed import Packed
from .streamed import Streamed

__all__ = ["DataSummary", "Engine", "InMemory", "Streamed", "Packed", "DaskEngine", "SPLIT_EVERY",
           "make_engine", "is_lazy"]
