"""Count the operations that make the host wait for the GPU, on a CPU-only machine.

On CUDA, reading a value back (``.item()``, ``bool()``, ``float()``, ``.tolist()``), or an op whose
output size depends on values (boolean-mask indexing, ``nonzero``, ``masked_select``, ``unique``) blocks
until every queued kernel has run. On the CPU nothing waits, but the same ops still pass through the
dispatcher: :class:`HostSyncCounter` records each one with the Python line that caused it.
``ignore`` and ``optimizer`` name tensors that live on the host on a GPU run too (AdamW's step counters).
"""

from __future__ import annotations

import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.nonzero.default,
            aten.masked_select.default, aten._unique2.default, aten.unique_dim.default,
            aten.unique_consecutive.default, aten.repeat_interleave.Tensor}
INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else []
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or [])


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as c: ...``; ``c.syncs`` lists ``(op, where)``."""

    def __init__(self, ignore: tuple[torch.Tensor, ...] = (),
                 optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__()
        self._ignore = {t.data_ptr() for t in ignore}
        self.optimizer = optimizer
        self.syncs: list[tuple[str, str]] = []
        self._patched: dict[str, object] = {}

    @property
    def ignore(self) -> set[int]:
        """Host-resident tensors: the given ones and the optimizer's step counters (made at its first step;
        a fused or capturable AdamW keeps them on the GPU and never reads them)."""
        steps = {s["step"].data_ptr() for s in self.optimizer.state.values() if "step" in s} \
            if self.optimizer is not None else set()
        return self._ignore | steps

    def _record(self, op: str) -> None:
        stack = [f for f in traceback.extract_stack()[:-2] if "host_syncs.py" not in f.filename]
        where = next((f"{f.filename}:{f.lineno} {f.line}" for f in reversed(stack)
                      if "/torch/" not in f.filename), str(stack[-1]))
        self.syncs.append((op, where))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        first = args[0] if args else None
        if (func in SYNC_OPS or (func in INDEX_OPS and _bool_index(args))) and not (
                isinstance(first, torch.Tensor) and first.data_ptr() in self.ignore):
            self._record(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self) -> HostSyncCounter:
        # .tolist() and .numpy() read memory without going through the dispatcher
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._patched[name] = original

            def counted(t: torch.Tensor, *a, _original=original, _name=name, **kw):  # noqa: ANN002, ANN003
                if self in _get_current_dispatch_mode_stack() and t.data_ptr() not in self.ignore:
                    self._record(f"Tensor.{_name}")
                return _original(t, *a, **kw)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        for name, original in self._patched.items():
            setattr(torch.Tensor, name, original)
        super().__exit__(*exc)
