"""Where dashboard panels go: the W&B run behind a ``WandbLogger``, or any other Lightning logger's metrics.

W&B gets the full dashboard (series against elapsed seconds, a failures table that grows, config and tags);
other loggers (TensorBoard, CSV) get the numbers, stepped by tick. Rank 0 only: Lightning's loggers are
no-ops elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger


def wandb_runs(loggers: Sequence[Logger]) -> list[Any]:
    """The W&B runs of the trainer's W&B loggers (created on first use, as Lightning does)."""
    return [logger.experiment for logger in loggers if isinstance(logger, WandbLogger)]


class Sink:
    """Logs one tick of metrics (and table rows) to every logger of a trainer.

    Args:
        loggers: ``trainer.loggers``.
        x_axis: the metric W&B plots the series against (logged with every tick).
    """

    def __init__(self, loggers: Sequence[Logger], x_axis: str):
        self.loggers = list(loggers)
        self.x_axis = x_axis
        self._defined: set[str] = set()
        self._tables: dict[str, Any] = {}
        self._tick = 0

    @property
    def takes_tables(self) -> bool:
        """Whether a logger here takes tables (W&B)."""
        return any(isinstance(logger, WandbLogger) for logger in self.loggers)

    def log(self, metrics: dict[str, float], x: float, tables: dict[str, tuple[list[str], list[list[Any]]]]) -> None:
        """Log ``metrics`` at ``x`` (and new ``tables`` rows: key -> (columns, rows)) as one step."""
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger.experiment, metrics, x, tables)
            else:
                logger.log_metrics(metrics, step=self._tick)
        self._tick += 1

    def _log_wandb(self, run: Any, metrics: dict[str, float], x: float, tables: dict) -> None:
        import wandb

        # Lightning plots every key against trainer/global_step, which stays 0 during predict: these series
        # get their own x axis (an exact name wins over Lightning's "*").
        for key in metrics.keys() - self._defined:
            run.define_metric(key, step_metric=self.x_axis)
            self._defined.add(key)
        row: dict[str, Any] = {**metrics, self.x_axis: x}
        for key, (columns, rows) in tables.items():
            if not rows:
                continue
            table = self._tables.get(key)
            if table is None:
                try:  # each log adds only the rows new since the last one
                    table = wandb.Table(columns=columns, log_mode="INCREMENTAL")
                except TypeError:  # wandb before incremental tables: the whole table again at each log
                    table = wandb.Table(columns=columns)
                self._tables[key] = table
            elif getattr(table, "log_mode", None) != "INCREMENTAL":
                table = self._tables[key] = wandb.Table(columns=columns, data=[list(r) for r in table.data])
            for values in rows:
                table.add_data(*values)
            row[key] = table
        run.log(row)

    def update_config(self, values: dict[str, Any]) -> None:
        for run in wandb_runs(self.loggers):
            run.config.update(values, allow_val_change=True)
        for logger in self.loggers:
            if not isinstance(logger, WandbLogger):
                logger.log_hyperparams(values)

    def update_summary(self, values: dict[str, Any]) -> None:
        for run in wandb_runs(self.loggers):
            run.summary.update(values)


def image(array: Any, caption: str) -> Any:
    """A W&B image of an ``uint8 [H, W, 3]`` array, stored with the run (no link to the source)."""
    import wandb

    return wandb.Image(array, caption=caption)
