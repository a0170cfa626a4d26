"""PyTorch Lightning integration: :class:`LDAMMonitor` calls an :class:`ldam.Monitor` at the end of
every training epoch.

    >>> monitor = ldam.Monitor(["fc3:0-9"], input_shape=(1, 28, 28), log_dir="runs/tb")
    >>> trainer = lightning.Trainer(max_epochs=10, callbacks=[LDAMMonitor(monitor, close=True)])

The monitor samples on its own frozen copy of the ``LightningModule`` (the module being trained is
left as it was), with ``step = trainer.current_epoch``, on the global rank 0 only (under DDP every
rank holds the same weights). Lightning is imported by this module only (``import ldam`` does not
need it): ``pip install 'ldam[lightning]'``.
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback as _LightningCallback
except ImportError:  # the standalone package of Lightning 1.x/2.x
    try:
        from pytorch_lightning import Callback as _LightningCallback  # type: ignore[no-redef]
    except ImportError:
        raise ImportError(
            "ldam.lightning needs PyTorch Lightning, which is not installed: pip install 'ldam[lightning]'"
        ) from None

from .monitor import Monitor


class LDAMMonitor(_LightningCallback):
    """Call ``monitor(pl_module, step=trainer.current_epoch)`` at the end of each training epoch on
    rank 0; at the end of ``fit``, wait for a background job and flush the writer (and close the
    monitor when ``close``)."""

    def __init__(self, monitor: Monitor, close: bool = False):
        if not isinstance(monitor, Monitor):
            raise TypeError(f"LDAMMonitor takes an ldam.Monitor, got {type(monitor).__name__}")
        super().__init__()
        self.monitor, self.close = monitor, close

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero:
            self.monitor(pl_module, step=trainer.current_epoch)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        if self.close:
            self.monitor.close()
        else:
            self.monitor.flush()


__all__ = ["LDAMMonitor"]
