import pytest
import torch
import torch.nn.functional as F

from structvpr.models import GeM, NetVLAD, PCAWhitening, PlaceEncoder, SimpleCNN, TimmTrunk


def test_gem_with_p_one_is_average_pooling_and_large_p_approaches_max():
    x = torch.rand(2, 3, 4, 5) + 0.1
    torch.testing.assert_close(GeM(p=1.0)(x), x.mean(dim=(-2, -1)))
    assert torch.allclose(GeM(p=60.0)(x), x.amax(dim=(-2, -1)), rtol=0.05)
    with pytest.raises(ValueError, match="p must be > 0"):
        GeM(p=0)


def test_netvlad_is_orderless_normalised_and_initialised_by_kmeans():
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=4, dim=8)
    assert vlad.output_dim(8) == 32 and not bool(vlad.initialised)
    # Four tight clusters around the first four axes: k-means finds them (in some order).
    features = torch.eye(8)[torch.arange(200) % 4] + 0.01 * torch.randn(200, 8)
    vlad.init_clusters(features)
    assert bool(vlad.initialised)
    nearest_axis = vlad.centroids.abs().argmax(dim=1)
    assert sorted(nearest_axis.tolist()) == [0, 1, 2, 3]
    assert (vlad.centroids.max(dim=1).values > 0.95).all()
    x = torch.randn(2, 8, 3, 5)
    out = vlad(x)
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    shuffled = x.flatten(2)[..., torch.randperm(15)].view_as(x)  # pooling ignores where features are
    torch.testing.assert_close(vlad(shuffled), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need at least 4 features for k-means, got 3"):
        vlad.init_clusters(torch.randn(3, 8))


def test_pca_whitening_is_identity_until_fitted_then_whitens():
    gen = torch.Generator().manual_seed(0)
    mixing = torch.randn(16, 16, generator=gen) * torch.linspace(0.1, 3.0, 16)  # correlated, unequal variances
    x = torch.randn(500, 16, generator=gen) @ mixing + 2.0
    pca = PCAWhitening(16, 6)
    torch.testing.assert_close(pca(x), x)  # not fitted: identity
    pca.fit(x)
    projected = (x - pca.mean) @ pca.projection.T
    torch.testing.assert_close(torch.cov(projected.T), torch.eye(6), atol=1e-3, rtol=0)  # white
    torch.testing.assert_close(pca(x), F.normalize(projected, dim=1))
    with pytest.raises(ValueError, match="need more than out_dim=6 descriptors to fit PCA, got 6"):
        PCAWhitening(16, 6).fit(x[:6])
    with pytest.raises(ValueError, match="need 0 < out_dim <= in_dim"):
        PCAWhitening(4, 8)


def test_timm_trunk_adapts_its_first_convolution_to_label_channels():
    trunk = TimmTrunk("resnet18", in_chans=5)
    out = trunk(torch.randn(1, 5, 64, 64))
    assert out.shape == (1, trunk.out_channels, 2, 2) and trunk.out_channels == 512
    with pytest.raises(FileNotFoundError, match="nope.pth: pretrained weight file does not exist"):
        TimmTrunk("resnet18", pretrained_path="nope.pth")


def test_place_encoder_dimensions_with_and_without_pca():
    enc = PlaceEncoder(in_chans=3, trunk="simple", aggregator="netvlad", num_clusters=4, pca_dim=8)
    channels = SimpleCNN().out_channels
    assert enc.pooled_dim == 4 * channels and enc.descriptor_dim == 8
    x = torch.randn(2, 3, 32, 64)
    assert enc(x).shape == (2, enc.pooled_dim)  # PCA not fitted yet
    enc.pca.fit(torch.randn(20, enc.pooled_dim))
    assert enc(x).shape == (2, 8) and enc.pooled(x).shape == (2, enc.pooled_dim)
    with pytest.raises(ValueError, match="aggregator must be 'gem', 'netvlad' or a callable"):
        PlaceEncoder(aggregator="max")


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenetv2_100"])
def test_weight_file_with_wrong_keys_fails_naming_the_unloaded_tensors(name, tmp_path):
    import timm

    full = timm.create_model(name, pretrained=False).state_dict()
    path = tmp_path / "wrong.pth"
    torch.save({f"backbone.{k}": v for k, v in full.items()}, path)  # keys of another naming scheme
    with pytest.raises(ValueError, match=rf"wrong.pth: \d+ of \d+ tensors of the {name} trunk get no weight"):
        TimmTrunk(name, pretrained_path=str(path))
    # timm's own file, with one junk key more: every trunk tensor loads, the classifier and the junk are reported
    torch.save({**full, "junk": torch.zeros(1)}, path)
    trunk = TimmTrunk(name, pretrained_path=str(path))
    assert trunk.load_report is not None and "junk" in trunk.load_report.unused
    first_key, first = next(iter(trunk.body.state_dict().items()))
    source = full[("features." if name == "vgg16" else "") + first_key]
    assert torch.equal(first, source)


def test_conv_only_vgg16_file_loads_and_adapts_to_label_channels(tmp_path):
    import timm

    convs = {k: v for k, v in timm.create_model("vgg16", pretrained=False).state_dict().items() if k.startswith("features.")}
    path = tmp_path / "vgg16_convs.pth"
    torch.save(convs, path)
    rgb = TimmTrunk("vgg16", pretrained_path=str(path))
    assert torch.equal(rgb.body[0].weight, convs["features.0.weight"]) and rgb.load_report.unused == []
    labels = TimmTrunk("vgg16", in_chans=5, pretrained_path=str(path))  # the teacher's first convolution
    assert labels.body[0].weight.shape[1] == 5 and labels.load_report.adapted == ["0.weight"]


def test_encoding_with_uninitialised_netvlad_warns():
    agg = NetVLAD(num_clusters=4, dim=8).eval()
    with pytest.warns(UserWarning, match="NetVLAD encodes with random centroids"):
        agg(torch.randn(2, 8, 3, 3))
    agg.init_clusters(torch.randn(50, 8))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agg(torch.randn(2, 8, 3, 3))


def test_trunk_and_aggregator_are_injectable():
    class TwoConvs(torch.nn.Module):
        def __init__(self, in_chans, width=6):
            super().__init__()
            self.out_channels = width
            self.body = torch.nn.Sequential(torch.nn.Conv2d(in_chans, width, 3, 2, 1), torch.nn.Conv2d(width, width, 3))

        def forward(self, x):
            return self.body(x)

    enc = PlaceEncoder(in_chans=5, trunk=TwoConvs, aggregator=lambda c: NetVLAD(num_clusters=3, dim=c))
    assert enc.pooled_dim == 18 and enc.train()(torch.randn(2, 5, 16, 16)).shape == (2, 18)
    with pytest.raises(TypeError, match="needs an int out_channels attribute"):
        PlaceEncoder(trunk=lambda c: torch.nn.Sequential(torch.nn.Conv2d(c, 4, 3)))
    with pytest.raises(TypeError, match=r"needs an output_dim\(channels\) method"):
        PlaceEncoder(aggregator=lambda c: torch.nn.Identity())


def test_resnet_file_without_batchnorm_counters_loads_as_torch_accepts_it(tmp_path, caplog):
    import logging

    import timm

    full = timm.create_model("resnet18", pretrained=False).state_dict()
    old_style = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    assert len(full) - len(old_style) == 20  # what an older checkpoint lacks
    path = tmp_path / "old.pth"
    torch.save({**old_style, "head.extra": torch.zeros(3)}, path)
    with caplog.at_level(logging.WARNING, logger="structvpr.models.backbones"):
        trunk = TimmTrunk("resnet18", pretrained_path=str(path))
    assert torch.equal(trunk.body.state_dict()["conv1.weight"], full["conv1.weight"])
    # unused keys are a warning, not INFO only
    assert any("not used by the resnet18 trunk" in r.message and "head.extra" in r.message for r in caplog.records)


def test_weight_file_with_a_wrong_shape_names_both_shapes(tmp_path):
    import timm

    full = timm.create_model("resnet18", pretrained=False).state_dict()
    full["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    path = tmp_path / "shape.pth"
    torch.save(full, path)
    with pytest.raises(
        ValueError,
        match=r"layer1.0.conv1.weight: the file has \(64, 64, 5, 5\), the trunk needs "
        r"\(64, 64, 3, 3\)",
    ):
        TimmTrunk("resnet18", pretrained_path=str(path))


def test_freezing_a_timm_trunk_below_a_stage_stops_its_gradients_and_batchnorm_statistics():
    from structvpr.models.backbones import TimmTrunk
    from structvpr.tasks import StructVPRStudent

    trunk = TimmTrunk("resnet18")
    layer4 = sum(p.numel() for p in trunk.body.layer4.parameters())
    total = sum(p.numel() for p in trunk.parameters())
    assert trunk.freeze_below("layer4") == total - layer4
    trunk.train()
    assert not trunk.body.bn1.training and not trunk.body.layer3.training and trunk.body.layer4.training
    assert all(p.requires_grad for p in trunk.body.layer4.parameters())
    with pytest.raises(ValueError, match=r"unknown stage 'layer9'"):
        TimmTrunk("resnet18").freeze_below("layer9")
    with pytest.raises(ValueError, match="vgg16 has blocks conv1 .. conv5"):
        TimmTrunk("vgg16").freeze_below("conv6")
    with pytest.raises(ValueError, match="trunk_frozen_below needs a timm trunk, got SimpleCNN"):
        StructVPRStudent(trunk_frozen_below="conv5")


def test_teacher_student_keeps_the_teacher_frozen_in_eval_mode_and_distils_known_distances():
    import doctest

    from structvpr.losses import distillation_loss
    from structvpr.models import PlaceEncoder, TeacherStudent
    from structvpr.models import teacher_student as module

    torch.manual_seed(0)
    pair = TeacherStudent(PlaceEncoder(3), PlaceEncoder(6))
    pair.train()
    assert pair.student.training and not pair.teacher.training
    assert not any(p.requires_grad for p in pair.teacher.parameters())
    rgb, maps = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 3, 6, 32, 32)
    targets = pair.teacher_tuples(maps)
    assert not targets.requires_grad
    # the teacher's descriptors of every view, one image at a time
    assert torch.allclose(targets[1, 2], pair.teacher.pooled(maps[1, 2:3])[0], atol=1e-6)
    weights = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    student, loss = pair.distillation(rgb, targets, weights)
    manual = ((student - targets).pow(2).sum(-1) * weights).mean(-1)
    assert torch.allclose(loss, manual) and torch.allclose(loss, distillation_loss(student, targets, weights))
    loss.sum().backward()
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert any(p.grad is not None for p in pair.student.parameters())
    assert torch.equal(pair(rgb[:, 0]), pair.student(rgb[:, 0]))
    with pytest.raises(ValueError, match="teacher descriptors have 2048 dimensions but the student's have 128"):
        TeacherStudent(PlaceEncoder(3), PlaceEncoder(6, aggregator="netvlad", num_clusters=16))
    assert doctest.testmod(module).failed == 0
