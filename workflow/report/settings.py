"""Settings of the report stage: config section ``report`` (resources/config.schema.yaml documents it)."""

from __future__ import annotations

from dataclasses import dataclass

from workflow.common.settings import Settings


@dataclass(frozen=True)
class ReportSettings(Settings):
    """``report``: the real vs synthetic grids (rule ``real_vs_synthetic``)."""

    SECTION = ("report",)

    images_per_row: int
    seed: int
