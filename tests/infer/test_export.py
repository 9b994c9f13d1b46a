"""ctmil export: ONNX (checked in onnxruntime) and TorchScript files that give the model's logits for any K."""

import json

import numpy as np
import pytest
import torch

from ctmil.cli import main
from ctmil.infer.export import export_model
from ctmil.infer.model_io import ModelError, load_model
from ctmil.networks import MILNet
from ctmil.train.handlers import save_model

TINY = {"feature_dim": 16, "attention_dim": 8, "ssl_hidden": 8, "gated": False}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    return save_model(MILNet(**TINY), tmp_path_factory.mktemp("m"))


@pytest.mark.parametrize("channels", [{}, {"in_channels": 2, "attention_channels": 1}])  # the paper's; the default's
@pytest.mark.parametrize("fmt,suffix", [("onnx", "onnx"), ("torchscript", "ts")])
def test_export_matches_the_model_for_any_bag_size(tmp_path, fmt, suffix, channels):
    torch.manual_seed(0)
    model = save_model(MILNet(**TINY, **channels), tmp_path / "m")
    out = tmp_path / f"model.{suffix}"
    assert export_model(model, out, fmt=fmt) < 1e-4
    net = MILNet(**json.loads(model.with_suffix(".json").read_text())["network"])
    net.load_state_dict(torch.load(model, weights_only=True))
    net.eval()
    x = torch.rand(2, 60, channels.get("in_channels", 1), 60, 60)  # a batch and a K the export never saw
    if fmt == "onnx":
        import onnxruntime as ort

        got = torch.from_numpy(ort.InferenceSession(str(out)).run(None, {"patches": x.numpy()})[0])
    else:
        got = torch.jit.load(str(out))(x)
    with torch.no_grad():
        assert torch.allclose(got, net(x), atol=1e-4)


def test_export_command_and_errors(model, tmp_path, capsys):
    assert main(["export", "--model", str(model), "--format", "onnx", "--out", str(tmp_path / "x" / "m.onnx")]) == 0
    assert "max logit difference" in capsys.readouterr().out and (tmp_path / "x" / "m.onnx").is_file()
    assert main(["export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    with pytest.raises(ValueError):
        export_model(model, tmp_path / "m.bin", fmt="tflite")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ModelError):
        export_model(tmp_path / "junk.pt", tmp_path / "m.onnx")


@pytest.mark.parametrize("name, fmt, expected", [
    ("m.onnx", None, "onnx"), ("m.ts", None, "torchscript"), ("m.pt", None, "torchscript"), ("m.ONNX", None, "onnx"),
    ("m.bin", "onnx", "onnx"), ("m.ts", "torchscript", "torchscript"),
])
def test_the_format_comes_from_the_extension(name, fmt, expected):
    from ctmil.infer.export import export_format

    assert export_format(name, fmt) == expected


@pytest.mark.parametrize("name, fmt, message", [
    ("m.ts", "onnx", "does not match the file name"), ("m.onnx", "torchscript", "does not match"),
    ("m.bin", None, "cannot tell the format"),
])
def test_export_refuses_a_format_the_name_contradicts_before_writing(model, tmp_path, capsys, name, fmt, message):
    out = tmp_path / "new" / name
    assert main(["export", "--model", str(model), "--out", str(out), *(["--format", fmt] if fmt else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "new").exists()


def test_export_by_extension_writes_torchscript(model, tmp_path, capsys):
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "m.ts")]) == 0
    assert capsys.readouterr().out.startswith("torchscript model written") and torch.jit.load(str(tmp_path / "m.ts")) is not None


def test_exports_keep_the_recorded_preprocessing(tmp_path):
    from ctmil.infer.model_io import load_model

    path = save_model(MILNet(**TINY), tmp_path / "m", info={"preprocessing": {"min_area_fraction": 0.5, "spatial_size": [180, 240]}})
    export_model(path, tmp_path / "e" / "model.ts", fmt="torchscript")
    loaded = load_model(tmp_path / "e" / "model.ts", allow_torchscript=True)
    # recorded before the window, slice sampling, float16 patches, the chest-wall growth and patch_norm existed:
    # exported with those off, as it was trained
    assert loaded.preprocessing == {"min_area_fraction": 0.5, "spatial_size": (180, 240), "window_hu": None, "max_slices": None,
                                    "slab_mm": None, "patch_dtype": "float32", "chest_wall": False, "dilate_mm": 8.0,
                                    "patch_norm": "minmax"}
    assert loaded.network["feature_dim"] == 16


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_fused_model_exports_with_its_density_input(tmp_path, fmt):
    """The default model fuses the lung-density model: the export takes the bag's density as a second input."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the ONNX parity check needs onnxruntime")
    from ctmil.transforms import DENSITY_FEATURES

    torch.manual_seed(0)
    net = MILNet(**TINY, n_density=len(DENSITY_FEATURES), density_use="fusion")
    g = np.random.default_rng(0)
    net.fusion.set_fit(g.normal(size=27), g.uniform(0.5, 2, size=27), g.normal(size=27), 0.3, [[0.8, 0.1], [1.5, -0.2]], [1, 1])
    path = save_model(net, tmp_path / "m")
    out = tmp_path / "e" / ("model.ts" if fmt == "torchscript" else "model.onnx")
    assert export_model(path, out, fmt=fmt) < 1e-4  # parity checked with a density input
    if fmt == "torchscript":  # and ctmil infer's TorchScript path feeds a bag's density to it
        loaded = load_model(out, allow_torchscript=True)
        x, d = torch.rand(20, 1, 60, 60), torch.randn(27)
        with torch.no_grad():
            expected = float(net.eval()(x[None], density=d[None]))
        assert loaded.predict(x, d).logit == pytest.approx(expected, abs=1e-4)
