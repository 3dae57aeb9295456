"""Python scene scripts run only when the user asks for it (``hybridsim --python``)."""

from __future__ import annotations

import pytest

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.scene.loader import load_python_scene, load_scene

SCRIPT = '''
from hybridsim import SceneBuilder

def build():
    b = SceneBuilder(name="scripted")
    b.time(fps=24, frames=3, substeps=4)
    b.camera(position=(0, -4, 1), look_at=(0, 0, 0.5), width=32, height=24)
    b.add_sphere((0, 0, 1), 0.2, color=(0.2, 0.5, 0.9))
    return b

if __name__ == "__main__":
    raise SystemExit("must not run as a scene")
'''


def test_a_python_scene_runs_only_when_asked(tmp_path, capsys):
    script = tmp_path / "scene.py"
    marker = tmp_path / "ran"
    script.write_text(SCRIPT + f"\nopen({str(marker)!r}, 'w').close()\n")
    with pytest.raises(SceneError, match="never executed"):
        load_scene(script)
    assert main(["render", str(script), "-o", str(tmp_path / "a.mp4"), "--quiet"]) == 2
    assert "--python" in capsys.readouterr().err
    assert not marker.exists()  # refused before anything ran
    spec = load_python_scene(script)
    assert marker.exists() and spec.name == "scripted" and spec.source.endswith("scene.py")
    assert main(["--python", "render", str(script), "-o", str(tmp_path / "b.mp4"), "--quiet"]) == 0
    assert (tmp_path / "b.mp4").exists()


@pytest.mark.parametrize("body, message", [
    ("x = 1\n", "must define `scene`"),
    ("raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
    ("scene = 42\n", "is a int, not a SceneSpec"),
])
def test_python_scene_errors_are_one_line_and_name_the_script(tmp_path, body, message):
    script = tmp_path / "bad.py"
    script.write_text(body)
    with pytest.raises(SceneError, match=message) as info:
        load_python_scene(script)
    assert str(script) in str(info.value) and "\n" not in str(info.value)
