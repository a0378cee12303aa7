"""A non-editable install works: the wheel built from this tree, installed with its
dependencies into a fresh venv, runs ``amic demo``, ``amic simulate modbus --profile
acrel-ddsy1352`` and ``amic config check`` on the example it ships, away from the source
tree (so nothing is found next to it by accident)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ("collector", "drivers", "protocols", "simulators")
# Not part of a build: tests, local state, build output.
_SKIP = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                               ".*_cache", ".hypothesis", "amic-demo-data", "tests")


@dataclass
class Installed:
    wheel: Path
    bin: Path  # the venv's bin folder
    work: Path  # an empty working directory outside the source tree
    env: dict[str, str]


def _tracked(folder: str) -> list[Path]:
    """The files of ``folder`` under version control (not a local amic.toml or the data
    directory of a run of the example); every file there outside a git checkout."""
    try:
        r = _run(["git", "ls-files", "-z", "--", folder], cwd=ROOT)
    except OSError:  # no git
        r = subprocess.CompletedProcess([], 1, "", "")
    if r.returncode == 0 and r.stdout:
        return [ROOT / name for name in r.stdout.split("\0") if name]
    return [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"  # a copy: setuptools builds in the tree (build/, egg-info)
    shutil.copytree(ROOT, src, ignore=_SKIP)
    t0 = time.monotonic()
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                  str(base / "dist"), str(src)])
    assert built.returncode == 0, built.stdout + built.stderr
    t1 = time.monotonic()
    (wheel,) = (base / "dist").glob("amic-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    # The running pip installs into the new venv: its dependencies come from the index
    # (or pip's cache), as for a user; the source tree is not on its path.
    got = _run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install",
                "-q", str(wheel)])
    assert got.returncode == 0, got.stdout + got.stderr
    t2 = time.monotonic()
    print(f"\nwheel built in {t1 - t0:.1f} s, installed with its dependencies in "
          f"{t2 - t1:.1f} s")
    work = base / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    yield Installed(wheel, bin_dir, work, env)


def test_wheel_holds_every_module_and_every_shipped_file(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = [str(p.relative_to(ROOT)) for top in CODE for p in (ROOT / top).rglob("*.py")
               if "__pycache__" not in p.parts and str(p.relative_to(ROOT)) not in names]
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    data = [p.relative_to(ROOT / "config") for p in _tracked("config")]
    absent = [str(p) for p in data if f"amic_config/{p}" not in names]
    assert not absent, f"config/ files not shipped as amic_config (package-data): {absent}"
    assert not any(n.startswith(("config/", "tests/")) for n in names)


def test_installed_profiles_come_from_site_packages(installed: Installed) -> None:
    r = _run([str(installed.bin / "python"), "-c",
              "from collector.config.profiles import SHIPPED_DIR, available_profiles as a; "
              "print(SHIPPED_DIR); print(sorted(a()))"],
             cwd=installed.work, env=installed.env)
    assert r.returncode == 0, r.stderr
    where, names = r.stdout.splitlines()
    assert Path(where).is_relative_to(installed.bin.parent), where
    assert Path(where).parts[-2:] == ("amic_config", "profiles")
    assert "acrel-ddsy1352" in names and "generic-energy-meter" in names


def test_demo_from_the_wheel(installed: Installed) -> None:
    data = installed.work / "demo-data"
    r = _run(["amic", "demo", "--buses", "1", "--meters", "10", "--seconds", "60",
              "--data-dir", str(data)], cwd=installed.work, env=installed.env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    cycle = re.search(r"cycle: (\d+)/10 meters read .* readings stored and committed", r.stdout)
    assert cycle is not None, r.stdout
    # The dead meter and the one answering with a wrong address are never read.
    assert 7 <= int(cycle[1]) <= 8, r.stdout
    assert "store integrity: ok" in r.stdout, r.stdout


def test_simulate_modbus_profile_from_the_wheel(installed: Installed) -> None:
    proc = subprocess.Popen(["amic", "simulate", "modbus", "--profile", "acrel-ddsy1352",
                             "--listen", "127.0.0.1:0"], cwd=installed.work,
                            env=installed.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it listens, or "" if it died
        assert line.startswith("listening on tcp://127.0.0.1:"), (
            line + (proc.stderr.read() if proc.stderr and proc.poll() is not None else ""))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped: 0 requests" in err, err


def test_config_example_then_check_from_the_wheel(installed: Installed) -> None:
    r = _run(["amic", "config", "example", "config"], cwd=installed.work, env=installed.env)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("amic.example.toml", "ledger.example.csv", "grafana/amic-dashboard.json",
                 "systemd/amic.service"):
        assert (installed.work / "config" / name).read_bytes() == \
            (ROOT / "config" / name).read_bytes(), name
    r = _run(["amic", "config", "check", "config/amic.example.toml"], cwd=installed.work,
             env=installed.env)
    assert r.returncode == 0, r.stdout + r.stderr
    # The example's Modbus meter names the shipped profile acrel-ddsy1352.
    assert r.stdout.startswith("config/amic.example.toml: OK: ") and "1 modbus" in r.stdout


def test_console_templates_and_static_files_from_the_wheel(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = [p for p in _tracked("collector/api/console") if p.suffix != ".py"]
    assert any(p.suffix == ".html" for p in shipped) and any(p.suffix == ".js" for p in shipped)
    absent = [str(p.relative_to(ROOT)) for p in shipped
              if str(p.relative_to(ROOT)) not in names]
    assert not absent, f"console files not in the wheel (package-data): {absent}"
    # The installed console renders its pages and finds its static files in site-packages.
    r = _run([str(installed.bin / "python"), "-c",
              "import pathlib, types\n"
              "from collector.api.console.views import make_console, static_dir\n"
              "api = types.SimpleNamespace(settings=types.SimpleNamespace(session_minutes=5),"
              " state={})\n"
              "env = make_console(api).env\n"
              "page = env.get_template('login.html').render(s=None, who=None, "
              "prefix='/console', csrf='c', next='/console/', error='<b>')\n"
              "print(static_dir())\n"
              "print(sorted(p.name for p in pathlib.Path(static_dir()).iterdir()))\n"
              "print('id=\"login\"' in page and '&lt;b&gt;' in page)\n"],
             cwd=installed.work, env=installed.env)
    assert r.returncode == 0, r.stderr
    where, files, rendered = r.stdout.splitlines()
    assert Path(where).is_relative_to(installed.bin.parent), where
    assert files == "['console.css', 'console.js']" and rendered == "True"
