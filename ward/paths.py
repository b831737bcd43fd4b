"""Where Ward keeps its data (models, database, keys). Shared by worker and gateway; no heavy imports."""
from __future__ import annotations

import os
import pathlib


def default_data_dir() -> pathlib.Path:
    """$WARD_DATA_DIR, else $XDG_DATA_HOME/ward, else ~/.local/share/ward."""
    if os.environ.get("WARD_DATA_DIR"):
        return pathlib.Path(os.environ["WARD_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return pathlib.Path(base) / "ward"
