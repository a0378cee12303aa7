"""Where the data amic ships is at run time: device profiles, the example configuration
and ledger, the Grafana board, the systemd unit.

They live in the repository's ``config/`` folder, installed as the package
``amic_config`` (``pyproject.toml``), and are found with :mod:`importlib.resources`, so
a wheel install finds them in site-packages just as a source checkout finds ``config/``.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["EXAMPLES", "ExampleExists", "copy_examples", "shipped_dir"]

PACKAGE = "amic_config"

# What ``amic config example`` writes: the example configuration with the ledger it
# names (relative to its own folder), the address list, the Grafana board, the unit file.
EXAMPLES = (
    "amic.example.toml",
    "ledger.example.csv",
    "addresses.example.txt",
    "grafana/amic-dashboard.json",
    "systemd/amic.service",
)


class ExampleExists(FileExistsError):
    """A file ``copy_examples`` would overwrite (without ``force``)."""


def shipped_dir() -> Path:
    """The folder of the shipped data (``amic_config``; ``config/`` in the repository).

    A source tree run without installing it (``PYTHONPATH=.``, or an editable install
    made before ``amic_config`` existed) falls back to ``config/`` next to the packages.
    """
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "config"
    if isinstance(root, Path):  # installed from a wheel or editable: a real folder
        return root
    raise RuntimeError(f"{PACKAGE} is not a folder on disk ({root!r}): install amic from "
                       "its wheel or source, not as a zip")


def copy_examples(dest: Path, *, force: bool = False) -> list[Path]:
    """Copy :data:`EXAMPLES` into ``dest`` (created if missing); the files written.

    Raises :class:`ExampleExists` naming the first file that is already there, before
    writing anything, unless ``force``.
    """
    src = shipped_dir()
    targets = [(src / name, dest / name) for name in EXAMPLES]
    if not force:
        for _, target in targets:
            if target.exists() or target.is_symlink():
                raise ExampleExists(f"{target}: already exists (--force replaces it)")
    written: list[Path] = []
    for source, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        written.append(target)
    return written
