"""Find and load Modbus device profiles (TOML files) by name or path.

Profiles ship in ``config/profiles/`` (installed as ``amic_config/profiles``, found with
importlib.resources: :mod:`collector.config.shipped`); a site adds its own in extra
directories (``search=[...]``), which are looked at first so a local file can replace a
shipped one of the same name.  ``protocols.modbus`` parses and validates the text; this
module only reads files.  Every failure - not found, unreadable, invalid - raises
:class:`~protocols.modbus.ProfileError` naming the file (or the name searched for), so a
caller catches one exception type.

Loaded profiles are cached by resolved path and file modification time/size, so a
configuration reload (SIGHUP) sees an edited file and an unchanged one is parsed once.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from protocols.modbus import Profile, ProfileError, parse_profile

from .safefile import FileRefused, path_problem, read_regular
from .shipped import shipped_dir

__all__ = [
    "SHIPPED_DIR",
    "ProfileError",
    "available_profiles",
    "clear_cache",
    "find_profile",
    "load_profile",
    "load_profile_file",
]

SHIPPED_DIR = shipped_dir() / "profiles"
SUFFIX = ".toml"
MAX_PROFILE_BYTES = 1 << 20  # a profile is a few KiB; the limit only stops /dev/zero & co.

_cache: dict[Path, tuple[int, int, Profile]] = {}
_lock = threading.Lock()


def _dirs(search: Iterable[str | os.PathLike[str]]) -> list[Path]:
    dirs = [Path(d).expanduser() for d in search]
    dirs.append(SHIPPED_DIR)
    seen: set[Path] = set()
    unique: list[Path] = []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _is_path(name_or_path: str | os.PathLike[str]) -> bool:
    if isinstance(name_or_path, os.PathLike):
        return True
    text = str(name_or_path)
    return os.sep in text or "/" in text or text.endswith(SUFFIX)


_PROFILE_TABLE = re.compile(rb"^[ \t]*\[[ \t]*profile[ \t]*\][ \t]*(?:#.*)?$", re.MULTILINE)


def _looks_like_profile(path: Path) -> bool:
    """A ``[profile]`` table in it: the configuration folder also holds amic.toml & co."""
    try:
        return _PROFILE_TABLE.search(read_regular(path, MAX_PROFILE_BYTES)) is not None
    except FileRefused:
        return False


def available_profiles(search: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Path]:
    """Profile name -> file, over the extra directories (first wins) and the shipped one.

    Only files with a ``[profile]`` table count, so a site's amic.toml or secrets file
    next to its profiles is not offered as one.
    """
    found: dict[str, Path] = {}
    for d in _dirs(search):
        if not d.is_dir():
            continue
        for path in sorted(d.glob(f"*{SUFFIX}")):
            if path.stem not in found and _looks_like_profile(path):
                found[path.stem] = path
    return found


def find_profile(name: str, search: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """The file of profile ``name``; ProfileError listing the directories searched."""
    problem = path_problem(f"{name}{SUFFIX}")
    if problem is not None:
        raise ProfileError(name[:40], [f"profile name {name[:40]!r}: {problem}"])
    for d in _dirs(search):
        path = d / f"{name}{SUFFIX}"
        if path.is_file():
            return path
    names = sorted(available_profiles(search))
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = ", ".join(str(d) for d in _dirs(search))
    have = ", ".join(names) if names else "none"
    raise ProfileError(name, [f"{name}: no profile {name!r}{hint} in {where}; "
                              f"available: {have}"])


def load_profile_file(path: str | os.PathLike[str]) -> Profile:
    """Read, parse and validate one profile file (cached); its name is the file stem."""
    problem = path_problem(os.fspath(path))
    if problem is not None:
        shown = repr(os.fspath(path)[:40])
        raise ProfileError(shown, [f"{shown}: not a usable path: {problem}"])
    p = Path(path).expanduser()
    source = str(p)
    try:
        resolved = p.resolve()
        st = resolved.stat()
    except OSError as e:
        raise ProfileError(source, [f"{source}: cannot read: {e.strerror or e}"]) from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _lock:
        hit = _cache.get(resolved)
    if hit is not None and (hit[0], hit[1]) == stamp:
        return hit[2]
    try:
        data = read_regular(resolved, MAX_PROFILE_BYTES)
    except FileRefused as e:
        raise ProfileError(source, [f"{source}: cannot read: {e}"]) from None
    profile = parse_profile(data, name=p.stem, source=source)
    with _lock:
        _cache[resolved] = (stamp[0], stamp[1], profile)
    return profile


def load_profile(name_or_path: str | os.PathLike[str],
                 search: Sequence[str | os.PathLike[str]] = ()) -> Profile:
    """A profile by name (``"acrel-ddsy1352"``) or by file path (``"site/x.toml"``).

    A name is looked up in ``search`` (in order), then in the shipped ``config/profiles/``;
    a bare ``name.toml`` that is not a file in the working directory is taken as a name.
    Raises ProfileError with every problem, naming the file.
    """
    problem = path_problem(os.fspath(name_or_path))
    if problem is not None:
        shown = repr(os.fspath(name_or_path)[:40])
        raise ProfileError(shown, [f"profile {shown}: not a usable name or path: {problem}"])
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        bare = str(name_or_path) == path.name  # "x.toml" alone: a file here, else a name
        if bare and not path.exists():
            return load_profile_file(find_profile(path.stem, search))
        return load_profile_file(path)
    return load_profile_file(find_profile(str(name_or_path), search))


def clear_cache() -> None:
    """Forget every loaded profile (tests; a reload re-checks modification times anyway)."""
    with _lock:
        _cache.clear()
