"""Where a run's units are computed: in this process, or on Dask workers (local or remote).

Both backends have one method, ``map(units)``, which yields ``(unit, UnitResult)`` as units
complete; the runner writes each result to the store (the client is the only writer). Models
are loaded once per process: by the serial backend once per run, by each Dask worker the first
time it meets a model key.

:class:`DaskBackend` starts a ``distributed.LocalCluster`` of process workers with one thread each
(TensorFlow and StarDist state is not thread-safe) or connects to a running scheduler by address,
so an HPC cluster started with dask-jobqueue works unchanged.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from ..models.bank import load_model
from ..models.base import SegmentationModel
from .units import EstimateUnit, Unit, UnitResult, compute_unit

__all__ = ["DaskBackend", "SerialBackend"]


def _load(unit: Unit | EstimateUnit, cache: dict) -> SegmentationModel | None:
    """The unit's model from ``cache`` (loaded on first use), or None when loading fails (compute_unit records why)."""
    if isinstance(unit.model, SegmentationModel):
        return unit.model
    if unit.model_key not in cache:
        try:
            cache[unit.model_key] = load_model(unit.model)
        except Exception:
            return None
    return cache[unit.model_key]


class SerialBackend:
    """Compute units one after the other in this process, loading each model once."""

    def map(self, units: Iterable[Unit | EstimateUnit]) -> Iterator[tuple[Unit | EstimateUnit, UnitResult]]:
        cache: dict = {}
        for unit in units:
            yield unit, compute_unit(unit, _load(unit, cache))


def _worker_score(unit: Unit | EstimateUnit) -> UnitResult:
    from distributed import get_worker

    worker = get_worker()
    cache = getattr(worker, "_cte_kit_models", None)
    if cache is None:
        cache = worker._cte_kit_models = {}
    return compute_unit(unit, _load(unit, cache))


class DaskBackend:
    """Compute units on Dask workers.

    Parameters
    ----------
    workers : int
        Worker processes of a new ``LocalCluster`` (ignored with ``scheduler``).
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), e.g. of a dask-jobqueue cluster.
    client : distributed.Client, optional
        An existing client (notebooks); used as is and left open.

    Notes
    -----
    Use as a context manager, or call :meth:`close`, to stop a cluster this backend started.
    :attr:`dashboard_link` is the address of Dask's dashboard.
    """

    def __init__(self, workers: int = 2, scheduler: str | None = None, client=None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError("the Dask backend needs dask.distributed: pip install 'dask[distributed]'") from None
        self._owned = []
        if client is not None:
            self.client = client
        elif scheduler is not None:
            self.client = Client(scheduler)
            self._owned = [self.client]
        else:
            if int(workers) < 1:
                raise ValueError(f"workers must be >= 1, got {workers}")
            import dask

            # Dask's nannies set MALLOC_TRIM_THRESHOLD_, which also freezes glibc's mmap threshold: every large
            # tensor of a forward pass is then mapped and unmapped anew, and a U-Net forward pass ran 1.7-2x
            # slower in a worker than in the client. The workers keep glibc's adaptive default.
            environ = {key: value for key, value in dask.config.get("distributed.nanny.pre-spawn-environ").items()
                       if key != "MALLOC_TRIM_THRESHOLD_"}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=40)
            self.client = Client(cluster)
            self._owned = [self.client, cluster]

    @property
    def dashboard_link(self) -> str:
        return self.client.dashboard_link

    def map(self, units: Iterable[Unit | EstimateUnit]) -> Iterator[tuple[Unit | EstimateUnit, UnitResult]]:
        from distributed import as_completed

        units = list(units)
        if not units:
            return
        futures = {self.client.submit(_worker_score, unit, pure=False): unit for unit in units}
        for future in as_completed(futures):
            yield futures[future], future.result()

    def close(self) -> None:
        for owned in self._owned:
            owned.close()
        self._owned = []

    def __enter__(self) -> "DaskBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
