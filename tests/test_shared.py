"""Several methods, one forward pass (flashtorch._shared, flashtorch.attribute_many)."""

import warnings

import pytest
import torch
from torch import nn

import flashtorch
from flashtorch import get_method
from flashtorch._shared import SharedPass, attribute_all, plan, shares_pass
from flashtorch.errors import LayerError, MethodError, TargetError

from .test_cleanup import _assert_same, _prepared_model, _snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

SHARED = ["gradient", "gradient_x_input", "gradcam", "gradcam_pp", "layercam"]


class Counted(nn.Module):
    """BN, an in-place ReLU right after the CAM layer, and a count of forward passes."""

    calls = [0]  # a class attribute: the fast=True copy counts into the same list

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)  # edits conv2's output in place
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        Counted.calls[0] += 1
        x = torch.relu(self.bn(self.conv1(x)))
        x = self.act(self.conv2(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = Counted()
    with torch.no_grad():  # BN statistics that do something
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _x(batch=3, seed=1):
    return torch.randn(batch, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("layer", [None, "conv2", "conv1"])
def test_each_map_equals_the_method_alone(model, fast, layer):
    x = _x()
    options = {"layer": layer} if layer else {}
    methods = [
        get_method(n)(model, fast=fast, **(options if get_method(n).needs_layer else {}))
        for n in SHARED
    ]
    alone = [m(x, target=[0, 3, 1]) for m in methods]
    together = attribute_all(methods, x, target=[0, 3, 1])
    assert [a.method for a in together] == SHARED
    for a, b in zip(alone, together):
        assert b.maps.shape == a.maps.shape and b.maps.dtype == a.maps.dtype
        torch.testing.assert_close(b.maps, a.maps, rtol=1e-5, atol=1e-6 * a.maps.abs().max())
        assert torch.equal(b.targets, a.targets)
        assert torch.equal(b.predicted, a.predicted)
        assert sorted(b.extras) == sorted(a.extras)
        for k in a.extras:
            torch.testing.assert_close(b.extras[k], a.extras[k], rtol=1e-5, atol=1e-7)
    assert any(a.maps.abs().sum() > 0 for a in together[2:])  # the CAMs are not empty


def test_in_place_op_after_the_layer_does_not_change_the_cam(model):
    """conv2's output is edited by the in-place ReLU: the CAM must see the pre-ReLU values."""
    x = _x()
    cam = get_method("gradcam")(model, layer="conv2", relu=False, normalize=False)
    grad = get_method("gradient")(model)
    alone = cam(x, target=2).maps
    shared = attribute_all([grad, cam], x, target=2)[1].maps
    torch.testing.assert_close(shared, alone, rtol=1e-5, atol=1e-7)
    # the pre-ReLU activation has negative values: a map built from the edited tensor differs
    assert (alone < 0).any()


def test_one_forward_pass_instead_of_one_per_method(model):
    x = _x()
    methods = [
        get_method(n)(model, **({"layer": "conv2"} if n != "gradient" else {}))
        for n in ["gradient", "gradcam", "layercam"]
    ]
    Counted.calls[0] = 0
    for m in methods:
        m(x)
    separate = Counted.calls[0]
    Counted.calls[0] = 0
    attribute_all(methods, x)
    assert separate == 3
    assert Counted.calls[0] == 1


def test_plan_groups_only_what_can_share(model):
    names = ["gradient", "guided", "gradcam", "scorecam", "smoothgrad", "gradient_x_input"]
    methods = [get_method(n)(model) for n in names]
    assert [shares_pass(m) for m in methods] == [True, False, True, False, False, True]
    assert plan(methods) == [[0, 2, 5], [1], [3], [4]]
    # other options (fast) or another model: separate passes
    other = [get_method("gradient")(model), get_method("gradcam")(model, fast=True)]
    assert plan(other) == [[0], [1]]
    other = [get_method("gradient")(model), get_method("gradcam")(Counted())]
    assert plan(other) == [[0], [1]]
    # CAMs alone share a pass only at one layer (their graph starts there)
    cams = [
        get_method("gradcam")(model, layer="conv2"),
        get_method("layercam")(model, layer="conv1"),
        get_method("gradcam_pp")(model, layer="conv2"),
    ]
    assert plan(cams) == [[0, 2], [1]]


def test_cams_alone_at_one_layer_share_a_pass(model):
    x = _x()
    cams = [get_method(n)(model, layer="conv2") for n in ["gradcam", "gradcam_pp", "layercam"]]
    alone = [c(x) for c in cams]
    Counted.calls[0] = 0
    together = attribute_all(cams, x)
    assert Counted.calls[0] == 1
    for a, b in zip(alone, together):
        torch.testing.assert_close(b.maps, a.maps, rtol=1e-5, atol=1e-7)


def test_shared_pass_refuses_methods_that_cannot_share(model):
    with pytest.raises(ValueError, match="cannot share"):
        SharedPass([get_method("guided")(model)])
    with pytest.raises(ValueError, match="one model and one set of options"):
        SharedPass([get_method("gradient")(model), get_method("gradcam")(model, fast=True)])


def test_state_restored_after_success_and_error():
    net = _prepared_model()  # mixed train/eval flags, a frozen bias, a .grad, the user's hook
    x = torch.randn(2, 3, 8, 8)
    x_before = x.clone()
    methods = [get_method(n)(net) for n in ["gradient", "gradcam", "gradient_x_input"]]
    snap = _snapshot(net)
    attribute_all(methods, x)
    _assert_same(net, snap)
    assert torch.equal(x, x_before)
    with pytest.raises(TargetError):
        attribute_all(methods, x, target=99)  # out of range, after the forward pass
    _assert_same(net, snap)
    net.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        attribute_all(methods, x)
    net.armed = False
    _assert_same(net, snap)


def test_errors_match_the_methods_alone(model):
    x = _x()
    grad = get_method("gradient")(model)
    cam = get_method("gradcam")(model, layer="conv2")

    def constant(output):  # a score that does not depend on anything
        return torch.ones(output.shape[0])

    with pytest.raises(TargetError, match="does not depend on the input"):
        attribute_all([grad, cam], x, target=constant)

    class Detour(nn.Module):  # a layer whose output the score never uses
        def __init__(self):
            super().__init__()
            self.used = nn.Conv2d(3, 4, 3)
            self.unused = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            self.unused(x)
            return self.head(self.used(x).mean((2, 3)))

    net = Detour()
    with pytest.raises(LayerError, match="does not depend on layer 'unused'"):
        attribute_all([get_method("gradient")(net), get_method("gradcam")(net, layer="unused")], x)


def test_zero_maps_warn_under_each_method_name():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-1.0)  # every activation dead: zero gradients everywhere
    methods = [get_method("gradient")(net), get_method("gradcam")(net, layer="0")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        attribute_all(methods, torch.randn(2, 3, 8, 8), target=0)
    text = " ".join(str(w.message) for w in seen)
    assert "gradient" in text and "gradcam" in text


def test_attribute_many_api(model):
    x = _x()
    out = flashtorch.attribute_many(
        model, x, {"gradient": {}, "gradcam": {"layer": "conv1"}, "guided": {}}, target=1
    )
    assert list(out) == ["gradient", "gradcam", "guided"]
    expected = flashtorch.attribute(model, x, target=1, method="gradcam", layer="conv1")
    torch.testing.assert_close(out["gradcam"].maps, expected.maps, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        out["guided"].maps, flashtorch.attribute(model, x, target=1, method="guided").maps
    )
    with pytest.raises(MethodError, match="named twice"):
        flashtorch.attribute_many(model, x, ["gradient", "gradient"])
    with pytest.raises(MethodError, match="bad option"):
        flashtorch.attribute_many(model, x, {"gradcam": {"nope": 1}})


def test_run_shares_the_forward_pass(tmp_path, model):
    pytest.importorskip("zarr")
    pytest.importorskip("pyarrow")
    x = _x(batch=4)
    data = torch.utils.data.TensorDataset(x)
    dataset = [(t[0],) for t in data]

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return dataset[i][0]

    Counted.calls[0] = 0
    flashtorch.run(
        model,
        Items(),
        {"gradient": {}, "gradcam": {"layer": "conv2"}},
        out=tmp_path / "run",
        batch_size=4,
        num_workers=0,
        progress=False,
        fast=False,
        size=12,
    )
    # probe + layout probes (one per method) + one forward for the whole batch
    assert Counted.calls[0] == 1 + 2 + 1
    run = flashtorch.open_run(tmp_path / "run")
    expected = flashtorch.attribute(model, x, method="gradcam", layer="conv2").maps
    for i in range(4):
        torch.testing.assert_close(
            torch.as_tensor(run.map("gradcam", i)), expected[i], rtol=1e-5, atol=1e-6
        )
    seconds = run.manifest[["seconds_gradient", "seconds_gradcam"]].to_numpy()
    assert (seconds[:, 0] == seconds[:, 1]).all()  # one pass: its time shared equally
