"""Finds host syncs on the CPU: the calls that would make a CUDA host wait for the GPU.

On a GPU, `torch.cuda.set_sync_debug_mode("error")` catches a sync when it happens. A CPU has no
such switch, so `SyncRecorder` records, in the current thread, every call that reads a tensor's
value back to Python or whose output size depends on the data (on CUDA both wait for the device):

    .item() int() float() bool() index()  -> aten._local_scalar_dense
    .tolist() .numpy()                     -> the method itself
    nonzero, unique, masked_select, bincount, repeat_interleave(Tensor), equal, allclose
    x[mask] / x[mask] = v with a boolean mask -> aten.index / aten.index_put

The training step must record nothing (tests/train/test_no_host_sync.py); bench/bench_train.py
--sync-debug uses the same recorder on the CPU and the CUDA switch on a GPU.
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_READBACK_METHODS = frozenset({"tolist", "numpy"})  # these never reach the dispatcher
_DATA_DEPENDENT_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_static", "argwhere", "unique", "_unique", "_unique2",
    "unique_consecutive", "unique_dim", "masked_select", "bincount", "histc", "equal", "allclose",
    "is_nonzero", "_assert_async", "repeat_interleave",
})


def _is_sync_op(func, args) -> bool:
    name = func._schema.name.split("::")[-1]
    if name == "repeat_interleave":  # only the Tensor-repeats overload sizes its output from data
        return func._overloadname in ("Tensor", "self_Tensor") and isinstance(args[1] if len(args) > 1 else None,
                                                                          torch.Tensor)
    if name in _DATA_DEPENDENT_OPS:
        return True
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
    return False


class _Dispatch(TorchDispatchMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_sync_op(func, args):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, found: list[str]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in _READBACK_METHODS:
            self.found.append(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


class SyncRecorder(contextlib.ExitStack):
    """Records sync-prone calls made in this thread while active; `take()` returns and clears them."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __enter__(self) -> "SyncRecorder":
        super().__enter__()
        self.enter_context(_Function(self.found))
        self.enter_context(_Dispatch(self.found))
        return self

    def take(self) -> list[str]:
        found, self.found[:] = list(self.found), []
        return found


def is_steady_step(step: int, *, log_every: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether training step `step` (1-based) is a steady-state step, which must not sync: neither a
    log step (checkpoints fall on those), nor an epoch's first or last step, nor the run's last."""
    return step % log_every != 0 and step % steps_per_epoch not in (0, 1) and step != total_steps


def cuda_sync_errors_on_steady_steps(trainer):
    """An on_step callback for `SAETrainer.run` on CUDA: from the end of one step to the end of the
    next, torch.cuda.set_sync_debug_mode is "error" when that next step is steady (its batch fetch
    included), "default" otherwise; so a host sync in a steady step raises. Reset it after the run."""
    def on_step(step: int) -> None:
        steady = is_steady_step(step + 1, log_every=trainer.cfg.log_every, steps_per_epoch=trainer.steps_per_epoch,
                                total_steps=trainer.total_steps)
        torch.cuda.set_sync_debug_mode("error" if steady else "default")
    return on_step
