"""Token layouts: which reading of a layer output is a grid, from the model and the shapes."""

import pytest
import torch
from torch import nn

from flashtorch._targets import logits_of
from flashtorch._tokens import TokenInfo, TokenLayout, grids_for, infer_layout, token_info
from flashtorch.errors import LayerError, TargetError

NONE = TokenInfo()


@pytest.mark.parametrize(
    "shape, info, hw, expected",
    [
        ((2, 197, 8), NONE, (224, 224), TokenLayout("tokens", (14, 14), 1)),
        ((2, 201, 8), TokenInfo(5), (224, 224), TokenLayout("tokens", (14, 14), 5)),
        ((2, 1 + 10 * 14, 8), NONE, (160, 224), TokenLayout("tokens", (10, 14), 1)),
        ((2, 7, 7, 768), NONE, (224, 224), TokenLayout("nhwc", (7, 7))),
        ((2, 56, 56, 96), NONE, (224, 224), TokenLayout("nhwc", (56, 56))),
        ((2, 768, 7, 7), NONE, (224, 224), TokenLayout("nchw", (7, 7))),
        ((2, 2048, 10, 10), NONE, (299, 299), TokenLayout("nchw", (10, 10))),
        ((2, 7, 7, 7), NONE, (224, 224), TokenLayout("nchw", (7, 7))),
        ((2, 7, 7, 7), TokenInfo(channels_last=True), (224, 224), TokenLayout("nhwc", (7, 7))),
    ],
)
def test_layouts(shape, info, hw, expected):
    assert infer_layout(torch.zeros(shape), shape[0], info, hw) == expected


def test_per_head_tensors_and_non_grids_are_refused_naming_reshape():
    with pytest.raises(LayerError, match="reshape="):
        infer_layout(torch.zeros(2, 3, 197, 64), 2, NONE, (224, 224))
    with pytest.raises(LayerError, match="reshape="):
        infer_layout(torch.zeros(2, 197, 8), 2, TokenInfo(3), (224, 224))
    with pytest.raises(LayerError, match="batch size 2"):
        infer_layout(torch.zeros(4, 197, 8), 2, NONE, (224, 224))


def test_ambiguous_token_counts_raise():
    # 16 tokens of a 64x64 input: 4x4 without prefix ... and no other reading; 17 with an unknown
    # prefix reads as 1 + 4x4 only. A count with two readings must raise.
    readings = [(p, g) for p in range(9) for g in grids_for(36 - p, (60, 60))]
    assert len(readings) > 1
    with pytest.raises(LayerError, match="several grids"):
        infer_layout(torch.zeros(1, 36, 4), 1, NONE, (60, 60))


def test_to_map_drops_prefix_and_keeps_row_major_order():
    t = torch.arange(2 * (2 + 6) * 3, dtype=torch.float32).view(2, 8, 3)
    m = TokenLayout("tokens", (2, 3), 2).to_map(t)
    assert m.shape == (2, 3, 2, 3)
    assert torch.equal(m[1, :, 1, 2], t[1, 2 + 1 * 3 + 2])
    x = torch.randn(2, 4, 5, 6)
    assert torch.equal(TokenLayout("nhwc", (4, 5)).to_map(x), x.permute(0, 3, 1, 2))


def test_token_info_reads_prefix_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
            self.register_tokens = nn.Parameter(torch.zeros(1, 4, 8))

    assert token_info(Net()).prefix == 5
    assert token_info(nn.Linear(2, 2)).prefix is None


def test_logits_of_reads_common_output_kinds():
    t = torch.randn(2, 3)

    class Out:
        logits = t

    assert logits_of(t) is t and logits_of(Out()) is t
    assert logits_of({"logits": t}) is t and logits_of((t, None)) is t
    with pytest.raises(TargetError, match="logits"):
        logits_of({"scores": t})
