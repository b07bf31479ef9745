"""Where a search's simulations run: local processes (the default) or a Ray cluster.

    pool(executor, workers, address) -> a context manager with `submit(fn, *args)`
    returning a future (`.result()`, `.cancel()`)

"local" is a `concurrent.futures.ProcessPoolExecutor` of `workers` processes.
"ray" sends each simulation to Ray as a task (`ray.init()` on this machine by
default, `address` to join a cluster: "auto", "ray://host:10001"); Ray is an
optional extra (`pip install 'llm-sandbox[ray]'`): without it the search is
refused in one line. The search takes results in candidate order whatever
finishes first, so both executors give the same ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from sandbox.errors import SandboxError

EXECUTORS = ("local", "ray")


def check_executor(executor: str, address: str | None) -> None:
    """Refuse an unknown executor, an address without Ray, or Ray when not installed."""
    if executor not in EXECUTORS:
        raise SandboxError(f"executor: unknown value '{executor}'; choose local or ray")
    if address is not None and executor != "ray":
        raise SandboxError("ray_address: only with executor = ray (--executor ray)")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SandboxError("--executor ray: Ray is not installed (pip install "
                               "'llm-sandbox[ray]'); the local executor needs nothing") from None


class _RayFuture:
    def __init__(self, ref: Any):
        self.ref = ref

    def result(self) -> Any:
        import ray

        return ray.get(self.ref)

    def cancel(self) -> None:
        import ray

        try:
            ray.cancel(self.ref)
        except Exception:  # already finished or gone: nothing to stop
            pass


class _RayPool:
    """Ray tasks behind the `submit` of an executor."""

    def __init__(self, workers: int, address: str | None):
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            opts: dict = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                opts["num_cpus"] = workers
            ray.init(address=address, **opts)
        self.remote = ray.remote(_call)

    def submit(self, fn: Callable, *args: Any) -> _RayFuture:
        return _RayFuture(self.remote.remote(fn, *args))

    def close(self) -> None:
        import ray

        if self.started:
            ray.shutdown()


def _call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


@contextmanager
def pool(executor: str, workers: int, address: str | None = None) -> Iterator[Any]:
    """An executor of `workers` simulations at a time (see the module docstring)."""
    if executor == "ray":
        ray_pool = _RayPool(workers, address)
        try:
            yield ray_pool
        finally:
            ray_pool.close()
    else:
        with ProcessPoolExecutor(max_workers=workers) as local:
            yield local
