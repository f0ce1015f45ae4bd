import os
import tempfile

# Set before anything imports ray or transformers.
os.environ.setdefault("N2N_CACHE", os.path.join(tempfile.gettempdir(), "n2n-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mnist1d():
    from n2n.data import load_dataset

    return load_dataset("mnist1d")


@pytest.fixture(scope="session")
def small_teacher(mnist1d):
    """A quickly trained quarter-width vgg1d teacher on MNIST-1D: (model, arch, val accuracy)."""
    from n2n.models import build_model
    from n2n.train import accuracy, train_classifier

    arch = {"family": "vgg", "hparams": {"input_shape": [1, 40], "num_classes": 10, "preset": "vgg1d",
                                         "width_mult": 0.25, "hidden": 64}}
    torch.manual_seed(0)
    model = build_model(arch)
    train_classifier(model, mnist1d.x_train, mnist1d.y_train, epochs=8, lr=3e-3, seed=0)
    return model, arch, accuracy(model, mnist1d.x_val, mnist1d.y_val)


SHARED = ("mnist1d", "small_teacher")  # session fixtures every test gets the same object of


def _fingerprint(value) -> list:
    """The tensors a shared fixture holds, as bytes: a model's weights and buffers, a dataset's arrays."""
    if isinstance(value, tuple):
        return [b for v in value for b in _fingerprint(v)]
    if isinstance(value, torch.nn.Module):
        return [t.detach().cpu().numpy().tobytes() for t in value.state_dict().values()]
    tensors = [getattr(value, k) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test") if hasattr(value, k)]
    return [t.numpy().tobytes() for t in tensors]


@pytest.fixture(autouse=True)
def _shared_fixtures_unchanged(request):
    """A test that changes a shared fixture in place corrupts every test after it (session 29: one added
    to small_teacher's weights, and four tests later in the run failed far from the cause): checked
    after each test that uses one, and named there."""
    used = [n for n in SHARED if n in request.fixturenames]
    before = {n: _fingerprint(request.getfixturevalue(n)) for n in used}
    yield
    changed = [n for n in used if _fingerprint(request.getfixturevalue(n)) != before[n]]
    assert not changed, f"{request.node.name} changed the shared fixture {changed[0]} in place: change a copy"


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session, with a logical GPU for fractional-GPU scheduling."""
    import ray

    # log_to_driver=False as n2n's own ray.init: workers' lines (their interpreter-shutdown noise
    # included) stay out of the stderr the CLI tests read
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=200 * 1024**2,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


TINY_CONFIG = """
seed: 0
teacher:
  recipe: {preset: vgg1d, width_mult: 0.25, hidden: [32], epochs: 6}
search:
  agent: reinforce
  removal_budget: 6
  shrink_budget: 6
  refine_budget: 2
  concurrency: 2
  agent_options: {batch_size: 3}
distill:
  epochs: 1
finalists: {k: 0}
target: {max_accuracy_drop: null}  # 1-epoch students of a tiny teacher: the mechanics, under N2N's reward
"""


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG)
    return path
