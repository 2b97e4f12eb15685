import json

import torch

from model_export.model import ARCHITECTURES, build_model
from tests.conftest import DATA


def test_state_dict_keys_and_shapes_equal_the_official_checkpoint():
    reference = {
        key: tuple(shape)
        for key, shape in json.loads((DATA / "hrnetv2_w18_wflw_dark_state_dict.json").read_text())
    }
    ours = {k: tuple(v.shape) for k, v in build_model("hrnetv2_w18").state_dict().items()}
    assert len(reference) == 1839
    assert sorted(ours.keys() - reference.keys()) == []
    assert sorted(reference.keys() - ours.keys()) == []
    assert {k for k in ours if ours[k] != reference[k]} == set()


def test_parameter_counts_match_mmpose():
    # PIPELINE.md section 1: 9,662,528 parameters (backbone 9,562,260, head 100,268);
    # 9,697,310 elements including BN buffers.
    model = build_model("hrnetv2_w18")
    assert sum(p.numel() for p in model.parameters()) == 9_662_528
    assert sum(p.numel() for p in model.backbone.parameters()) == 9_562_260
    assert sum(p.numel() for p in model.keypoint_head.parameters()) == 100_268
    assert sum(v.numel() for v in model.state_dict().values()) == 9_697_310


def test_fuse_upsampling_is_bilinear_not_nearest():
    # mmpose's WFLW config overrides HRNet's nearest upsampling; a nearest-neighbour fuse
    # would load the same weights and silently give different heatmaps.
    model = build_model("hrnetv2_tiny")
    up = model.backbone.stage2[0].fuse_layers[0][1][2]
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    y = up(x)
    # align_corners=False bilinear: output pixel (0,1) samples source x = 0.25 -> 0.25
    assert torch.allclose(y[0, 0, 0, :4], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_heatmap_shape_and_tiny_variant_shares_the_topology():
    for arch in ARCHITECTURES:
        model = build_model(arch).eval()
        with torch.no_grad():
            out = model(torch.zeros(2, 3, 256, 256))
        assert out.shape == (2, 98, 64, 64)
    tiny = build_model("hrnetv2_tiny").state_dict().keys()
    w18 = build_model("hrnetv2_w18").state_dict().keys()
    # Same module naming scheme: every tiny key exists in the full model.
    assert set(tiny) <= set(w18)


def test_head_init_follows_mmpose():
    model = build_model("hrnetv2_w18")
    final = model.keypoint_head.final_layer
    assert abs(float(final[3].weight.std()) - 0.001) < 2e-4
    assert float(final[3].bias.abs().max()) == 0.0
    assert float(final[1].weight.min()) == 1.0 and float(final[1].bias.abs().max()) == 0.0
