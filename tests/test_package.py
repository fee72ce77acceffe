"""The distribution installs one import name, ``trafficcast``, and works from anywhere.

The four folders of the checkout (``app/``, ``models/``, ``data/``, ``graph/``) are the
subpackages ``trafficcast.app`` ... ``trafficcast.graph``; nothing named ``app``, ``data``,
``models`` or ``graph`` may reach site-packages, where it would shadow (or be shadowed by) any
other project's package of that name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
LIBRARIES = ("app", "models", "data", "graph")
SOURCES = ("pyproject.toml", "README.md", "trafficcast", *LIBRARIES)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_listed_and_mapped() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {"trafficcast"} | {
        "trafficcast." + ".".join(init.parent.relative_to(REPO).parts)
        for lib in LIBRARIES
        for init in (REPO / lib).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert listed == on_disk
    mapping = setuptools["package-dir"]
    assert mapping == {"trafficcast": "trafficcast", **{f"trafficcast.{n}": n for n in LIBRARIES}}
    # The checkout's trafficcast/ links to the four folders, so tools that read files see them.
    for lib in LIBRARIES:
        link = REPO / "trafficcast" / lib
        assert link.is_symlink() and link.resolve() == (REPO / lib).resolve()


def test_the_console_script_is_the_package_entry_point() -> None:
    assert _pyproject()["project"]["scripts"] == {"trafficcast": "trafficcast.app.entry:main"}
    out = subprocess.run(
        [sys.executable, "-m", "trafficcast", "--help"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: trafficcast ")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout's sources (the checkout stays untouched)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "state_*.pt", "*.sqlite3*")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    # The build needs setuptools; the dev environment has it (torch requires it), so the build
    # runs here without fetching a build environment.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(root / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (found,) = (root / "dist").glob("trafficcast-*.whl")
    return found


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        top_level = {n.split("/")[0] for n in names}
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == {"trafficcast", dist_info}
    assert "trafficcast = trafficcast.app.entry:main" in entry_points
    for needed in (
        "trafficcast/__main__.py",
        "trafficcast/app/service/__init__.py",
        "trafficcast/app/db/migrations/versions/0001_initial.py",
        "trafficcast/app/bundled/metr-la-week/model.pt",
        "trafficcast/app/static/index.html",
        "trafficcast/data/sample/metr-la-week.h5",
    ):
        assert needed in names, needed
    assert not any(Path(n).name.startswith("state_") for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment in another directory with the wheel installed in it.

    The wheel goes in with pip; its dependencies (torch and the rest, about 1.5 GB) are not
    installed a second time: the test environment's site-packages is added to the new one's path
    after the install, as plain directory (so its ``.pth`` files, the editable install's among
    them, are not run)."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    if "no such option: --python" in install.stderr:  # pip < 22.3
        pytest.skip("pip too old for --python")
    assert install.returncode == 0, install.stdout + install.stderr
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    deps = sysconfig.get_path("purelib")
    (Path(site) / "_test_dependencies.pth").write_text(deps + "\n", encoding="utf-8")
    return venv


def _run(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )


@pytest.mark.parametrize("name", LIBRARIES)
def test_no_generic_top_level_name_is_importable(
    installed: Path, tmp_path: Path, name: str
) -> None:
    out = _run(installed, f"import {name}", tmp_path)
    assert out.returncode == 1
    assert f"ModuleNotFoundError: No module named '{name}'" in out.stderr


def test_the_installed_package_comes_from_site_packages(installed: Path, tmp_path: Path) -> None:
    out = _run(
        installed,
        "import trafficcast.app.cli, trafficcast.data, trafficcast.models, trafficcast.graph;"
        "print(trafficcast.app.cli.__file__)",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(installed)


def test_the_installed_package_serves_the_bundled_model(installed: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        TRAFFICCAST_OBSERVATIONS_DB=str(tmp_path / "obs.sqlite3"), TRAFFICCAST_TORCH_THREADS="1"
    )
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [str(installed / "bin" / "trafficcast"), "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        model = httpx.get(f"{url}/v1/model", timeout=10).json()
        answer = httpx.get(f"{url}/v1/forecast", timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["sensors"]) == model["sensors"] == 207
        assert len(body["forecast"]) == model["horizon"] == 12
        assert all(0 < v < 100 for row in body["forecast"] for v in row)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
