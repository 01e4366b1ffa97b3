"""adapter_core.atomic: files appear whole or not at all, with the mode a plain open() gives."""
import os
import stat

import pytest

from temporal_adapter.adapter_core.atomic import atomic_path
from temporal_adapter.adapter_core.metrics import write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_complete_write_replaces_the_file_with_the_usual_mode(tmp_path, umask_022):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_json({"psnr": 30.5}, str(target))
    assert target.read_text().strip().startswith("{") and '"psnr": 30.5' in target.read_text()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644  # as ComfyUI's own outputs, not mkstemp's 0o600
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(ValueError):  # strict JSON: NaN refused while writing
        write_json({"psnr": float("nan")}, str(target))
    with pytest.raises(RuntimeError), atomic_path(str(target)) as temporary:
        with open(temporary, "w") as f:
            f.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]
