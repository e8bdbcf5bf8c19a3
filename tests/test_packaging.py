"""An install adds one import name, `rayruns`, and the public API is reachable from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import rayruns

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_has_one_top_level_name(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rayruns-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(top_level).decode().split() == ["rayruns"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"rayruns"}
    for layer in ("actors", "client", "providers", "serve_app"):
        assert f"rayruns/{layer}/__init__.py" in names
    for page_file in ("index.html", "app.js", "style.css"):
        assert f"rayruns/serve_app/static/{page_file}" in names


def test_public_names_resolve() -> None:
    for name in rayruns.__all__:
        assert getattr(rayruns, name) is not None
    assert rayruns.Runs.__module__ == "rayruns.actors.runs"


def test_bare_layer_names_are_not_importable_outside_the_checkout(tmp_path: Path) -> None:
    names = ("actors", "providers", "serve_app")
    script = f"import importlib.util as u; print([u.find_spec(n) for n in {names!r}])"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[None, None, None]"
