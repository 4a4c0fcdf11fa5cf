"""The modern aggregators and the ViT trunk: published sizes, the reference parameter counts, weight files."""

import pytest
import torch

from structvpr.models import SALAD, BoQ, MixVPR, PlaceEncoder, ViTTrunk
from structvpr.models.salad import log_optimal_transport


def _count(module):
    return sum(p.numel() for p in module.parameters())


def _linear(i, o, bias=True):
    return i * o + (o if bias else 0)


def _mha(d):  # in_proj (3d x d + 3d) and out_proj (d x d + d) of torch's MultiheadAttention
    return 3 * d * d + 3 * d + _linear(d, d)


def test_mixvpr_at_the_published_setting_has_the_reference_size_and_parameters():
    agg = MixVPR(in_channels=1024, in_h=20, in_w=20, out_channels=1024, mix_depth=4, mlp_ratio=1, out_rows=4)
    n = 400  # reference: 4 mixers LN(n), Lin(n, n), Lin(n, n); Lin(1024, 1024) over channels; Lin(n, 4) over rows
    assert _count(agg) == 4 * (2 * n + 2 * _linear(n, n)) + _linear(1024, 1024) + _linear(n, 4) == 2_337_604
    out = agg(torch.rand(2, 1024, 20, 20))
    assert out.shape == (2, 4096) == (2, agg.output_dim())
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match=r"built for \(1024, 20, 20\) trunk maps, got \(1024, 23, 23\)"):
        agg(torch.rand(1, 1024, 23, 23))


def test_salad_at_the_published_setting_has_the_reference_size_and_parameters():
    agg = SALAD(num_channels=768, num_clusters=64, cluster_dim=128, token_dim=256)
    heads = _linear(768, 512) * 3 + _linear(512, 256) + _linear(512, 128) + _linear(512, 64) + 1  # + the dustbin
    assert _count(agg) == heads == 1_411_009
    agg.eval()
    fmap, token = torch.rand(2, 768, 16, 16), torch.rand(2, 768)
    out = agg((fmap, token))
    assert out.shape == (2, 8448) == (2, agg.output_dim())
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
    # without a CLS token (a CNN trunk) the token is the map's mean feature
    assert torch.allclose(agg(fmap), agg((fmap, fmap.mean(dim=(-2, -1)))))
    with pytest.raises(ValueError, match="more local features than clusters, got 49 features for 64 clusters"):
        agg((torch.rand(1, 768, 7, 7), token[:1]))


def test_sinkhorn_gives_every_feature_unit_mass_and_the_dustbin_its_share():
    torch.manual_seed(0)
    scores = torch.randn(3, 4, 10)
    p = log_optimal_transport(scores, torch.tensor(1.0), iters=50).exp()
    assert torch.allclose(p.sum(1), torch.ones(3, 10), atol=1e-5)  # columns: each feature's mass is 1
    # rows: mass (n + m) / (n + m) = 1 per cluster, n - m = 6 for the dustbin, once converged
    assert torch.allclose(p.sum(2), torch.tensor([1.0, 1.0, 1.0, 1.0, 6.0]).expand(3, 5), atol=1e-3)


@pytest.mark.parametrize(("channels", "d", "params"), [(1024, 512, 15_301_152), (768, 384, 8_626_080)])
def test_boq_at_the_published_settings_has_the_reference_sizes_and_parameters(channels, d, params):
    agg = BoQ(in_channels=channels, proj_channels=d, num_queries=64, num_layers=2, row_dim=32)
    encoder_layer = _mha(d) + _linear(d, 4 * d) + _linear(4 * d, d) + 4 * d  # + its two LayerNorms
    block = encoder_layer + 64 * d + _mha(d) + 2 * d + _mha(d) + 2 * d  # queries, self-attn + LN, cross-attn + LN
    assert _count(agg) == (channels * d * 9 + d) + 2 * d + 2 * block + _linear(128, 32) == params
    agg.eval()
    out = agg(torch.rand(2, channels, 20, 20))
    assert out.shape == (2, 32 * d) == (2, agg.output_dim())
    assert agg(torch.rand(1, channels, 7, 9)).shape == (1, 32 * d)  # no position encoding: any map size


def _vit(**kw):
    return ViTTrunk(3, "vit_small_patch14_dinov2", model_kwargs={"depth": 2}, **kw)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """A random depth-2 ViT-S/14 saved in timm's keys and in Meta's (torch.hub's: a 37x37 position grid
    for 518 pixels and a mask token); nothing downloaded."""
    import timm

    folder = tmp_path_factory.mktemp("vit")
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, depth=2)
    timm_state = ref.state_dict()
    torch.save(timm_state, folder / "timm.pth")
    torch.save({**timm_state, "mask_token": torch.zeros(1, 384)}, folder / "meta.pth")
    wrong = {k: v for k, v in timm_state.items() if k != "blocks.1.norm1.weight"}
    torch.save({**wrong, "head.extra": torch.zeros(3)}, folder / "wrong.pth")
    return folder, ref


@pytest.mark.parametrize("kind", ["meta", "timm"])
def test_dinov2_weights_in_meta_and_timm_keys_load_strictly(weight_files, kind):
    folder, ref = weight_files
    trunk = _vit(pretrained_path=str(folder / f"{kind}.pth"))
    for key, value in ref.state_dict().items():
        if key != "pos_embed":
            assert torch.equal(trunk.model.state_dict()[key], value), key
    assert trunk.model.pos_embed.shape == (1, 1 + 16 * 16, 384)  # resampled from 37x37 to the 224 grid
    adapted = ViTTrunk(5, "vit_small_patch14_dinov2", pretrained_path=str(folder / f"{kind}.pth"), model_kwargs={"depth": 2})
    assert adapted.model.patch_embed.proj.weight.shape == (384, 5, 14, 14)  # a G-channel teacher's input


def test_a_wrong_weight_file_fails_naming_the_keys(weight_files):
    folder, _ = weight_files
    with pytest.raises(ValueError, match=r"wrong.pth: not a weight file of vit_small_patch14_dinov2") as err:
        _vit(pretrained_path=str(folder / "wrong.pth"))
    assert "blocks.1.norm1.weight" in str(err.value) and "head.extra" in str(err.value)


def test_vit_trunk_gives_patch_maps_at_any_multiple_of_14_and_names_the_nearest_valid_size():
    trunk = _vit().eval()
    for side, grid in ((224, 16), (280, 20), (322, 23)):
        fmap, cls = trunk.forward_with_token(torch.rand(1, 3, side, side))
        assert fmap.shape == (1, 384, grid, grid) and cls.shape == (1, 384)
    with pytest.raises(ValueError, match="multiples of 14: height 64 -> 70, width 128 -> 126"):
        trunk(torch.rand(1, 3, 64, 128))


def test_vit_trunk_trains_only_its_last_blocks():
    trunk = _vit(train_blocks=1)
    frozen = [trunk.model.patch_embed, trunk.model.blocks[0]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert not trunk.model.pos_embed.requires_grad and not trunk.model.cls_token.requires_grad
    assert all(p.requires_grad for p in trunk.model.blocks[1].parameters())
    fmap, cls = trunk.forward_with_token(torch.rand(1, 3, 56, 70))
    (fmap.sum() + cls.sum()).backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert trunk.model.blocks[1].attn.qkv.weight.grad is not None
    with pytest.raises(ValueError, match=r"train_blocks must lie in \[0, 2\]"):
        _vit(train_blocks=3)


def test_place_encoder_hands_the_cls_token_to_salad_and_not_to_others():
    torch.manual_seed(0)
    encoder = PlaceEncoder(3, trunk=lambda c: _vit(), aggregator=lambda ch: SALAD(ch, 8, 16, 32)).eval()
    x = torch.rand(2, 3, 56, 70)  # 4 x 5 = 20 patches for 8 clusters
    fmap, cls = encoder.trunk.forward_with_token(x)
    assert encoder.pooled_dim == 8 * 16 + 32
    assert torch.allclose(encoder(x), encoder.aggregator((fmap, cls)), atol=1e-6)
    assert not torch.allclose(encoder(x), encoder.aggregator(fmap), atol=1e-3)
    with pytest.raises(ValueError, match="reads the trunk's CLS token"):
        encoder.describe(fmap)
    boq = PlaceEncoder(3, trunk=lambda c: _vit(), aggregator=lambda ch: BoQ(ch, 64, 4, 1, 8)).eval()
    assert not boq.passes_token and boq(x).shape == (2, 64 * 8)


def test_resnet50_cut_after_layer3_gives_the_recipes_1024_channel_map_for_mixvpr():
    from structvpr.models import TimmTrunk

    trunk = TimmTrunk("resnet50:layer3")
    assert trunk.out_channels == 1024 and "layer4" not in dict(trunk.body.named_children())
    trunk.freeze_below("layer3")  # MixVPR: conv1 .. layer2 frozen
    assert not any(p.requires_grad for p in trunk.body.layer2.parameters())
    assert all(p.requires_grad for p in trunk.body.layer3.parameters())
    encoder = PlaceEncoder(3, trunk="resnet50:layer3", aggregator=lambda c: MixVPR(c, 4, 4, 64, 1, 1, 4)).eval()
    assert encoder(torch.rand(1, 3, 64, 64)).shape == (1, 256)  # 64 / 16 = 4 positions a side
    with pytest.raises(ValueError, match=r"resnet50 has the feature stages \['act1', 'layer1'"):
        TimmTrunk("resnet50:layer5")
