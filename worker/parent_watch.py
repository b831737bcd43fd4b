"""A helper process that ends with the process that started it.

The engine core and tensor-parallel ranks notice their parent's end by end-of-file on their pipe, but
only when they read it: one still loading a model (minutes for a large one) would go on holding GPU
memory that the restarted worker needs. A daemon thread watching the parent's pid ends them at once.
"""
from __future__ import annotations

import os
import threading
import time


def exit_with_parent(poll_s: float = 0.5) -> None:
    """Exits this process (status 1) within ``poll_s`` of its parent's end, whatever it is doing."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by another process
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="ward-parent-watch", daemon=True).start()
