"""A plain (non-editable) install carries the kernels and scenes and runs on its own."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_kernels_and_scenes_and_runs_without_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("hybridsim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for required in ("hybridsim/kernels/warp/spheres.py", "hybridsim/kernels/taichi/spheres.py",
                     "hybridsim/scenes/bounce.toml", "hybridsim/cli.py"):
        assert required in names
    # every module of the source tree ships (the package list in pyproject.toml is explicit)
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "hybridsim").rglob("*.py")]
    sources += ["hybridsim/kernels/" + p.relative_to(ROOT / "kernels").as_posix() for p in (ROOT / "kernels").rglob("*.py")]
    missing = [name for name in sources if name not in names]
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = (
        "import hybridsim, sys; from pathlib import Path; "
        f"assert Path(hybridsim.__file__).is_relative_to({str(target)!r}), hybridsim.__file__; "
        "from hybridsim.cli import main; "
        "sys.exit(main(['render', '--frames', '2', '--quiet', '-o', 'x.mp4']))"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HYBRIDSIM_CACHE_DIR": str(ROOT / ".cache")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.mp4").stat().st_size > 0
