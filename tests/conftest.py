"""Suite-wide settings and shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The suite's tensors are small: intra-op threads only add contention on a loaded 2-core machine
    (measured 30-50x slower steps with 2 threads under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository; tests that need it skip cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A random-init digits teacher checkpoint and a TOML config with a tiny proxy budget (one rung, no
    confirmation: the rung and confirmation tests turn them on with --max-steps and --confirm)."""
    from kdzero.models import create_model

    folder = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10, in_chans=1)
    ckpt = folder / "teacher.pt"
    torch.save(teacher.state_dict(), ckpt)
    config = folder / "tiny.toml"
    config.write_text(f"""
teacher = "resnet8"
teacher_ckpt = "{ckpt.as_posix()}"
student = "resnet8"
population = 4
iterations = 6
presets = false
max_steps = 12
confirm = 0
[proxy]
steps = 12
batch_size = 32
num_views = 1
sharpness_samples = 64
cka_samples = 64
""")
    return {"folder": folder, "config": config}
