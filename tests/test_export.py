import json

import numpy as np
import pytest
import torch

from structvpr.cli import main
from structvpr.tasks import StructVPRStudent


@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    torch.manual_seed(0)
    model = StructVPRStudent(aggregator="netvlad", num_clusters=8, pca_dim=32)
    model.encoder.aggregator.init_clusters(torch.randn(200, 128))
    model.encoder.pca.fit(torch.nn.functional.normalize(torch.randn(300, 8 * 128), dim=1))
    model.saved_input_spec = {"image_size": [48, 64], "taxonomy": "cityscapes"}
    return model, model.export_student(tmp_path_factory.mktemp("export") / "student.ckpt")


def test_student_checkpoint_records_what_to_feed_it(student_file):
    _, path = student_file
    spec = torch.load(path, weights_only=True)["structvpr_input"]
    assert spec["image_size"] == [48, 64] and spec["descriptor_dim"] == 32 and spec["taxonomy"] == "cityscapes"
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406]) and spec["pca"] == {"in": 1024, "out": 32, "fitted": True}
    loaded = StructVPRStudent.load_from_checkpoint(path)
    with pytest.warns(UserWarning, match=r"images are \(32, 64\) but this student was trained on \(48, 64\)"):
        loaded.encode(torch.randn(1, 3, 32, 64))
    with pytest.warns(UserWarning, match="images look unnormalised"):
        loaded.encode(torch.full((1, 3, 48, 64), 128.0))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_model_gives_the_pytorch_descriptors(student_file, tmp_path, fmt):
    model, path = student_file
    out = tmp_path / ("student.onnx" if fmt == "onnx" else "student.pt")
    main(["export", "--ckpt", str(path), "--format", fmt, "--out", str(out)])
    images = torch.randn(5, 3, 48, 64)  # another batch size than the export example: the batch is dynamic
    expected = model.eval()(images).detach().numpy()
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = session.run(["descriptors"], {"images": images.numpy()})[0]
        meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    else:
        files = {"structvpr_input.json": ""}
        scripted = torch.jit.load(str(out), _extra_files=files)
        got = scripted(images).detach().numpy()
        meta = {"structvpr_input": files["structvpr_input.json"]}
    assert got.shape == (5, 32)
    assert np.abs(got - expected).max() < 1e-4
    assert json.loads(meta["structvpr_input"])["image_size"] == [48, 64]
