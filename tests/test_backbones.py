"""The offline ImageNet backbone: a torch checkpoint read safely and ported right, and the others."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest
from conftest import offline_mobilenet_v2_path

from models.core.errors import GdlError
from models.toolkit.backbones import (
    BACKBONES,
    build_mobilenet_v2,
    check_layers,
    deprocess,
    eval_crop,
    feature_model,
    input_step,
    layer_names,
    load_backbone,
    load_torch_mobilenet_v2,
    preprocess,
    weights_entry,
)
from models.toolkit.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, read_state_dict


@pytest.fixture(scope="module")
def state_dict():
    return read_state_dict(offline_mobilenet_v2_path())


@pytest.fixture(scope="module")
def classifier():
    model, described = load_backbone("mobilenet_v2", offline_mobilenet_v2_path(), include_top=True)
    return model, described


def test_offline_mobilenet_v2_sees_a_cat_in_chelsea(classifier):
    import skimage.data

    model, described = classifier
    view = eval_crop(skimage.data.chelsea(), 224)
    probs = model.predict(preprocess("mobilenet_v2", view)[None], verbose=0)[0]
    top5 = np.argsort(probs)[::-1][:5]
    assert set(top5) & set(range(281, 286)), top5  # ImageNet's domestic cats
    assert top5[0] in range(281, 286) and probs[top5[0]] > 0.5  # a wrong port is not this confident
    assert probs[list(range(281, 286))].sum() > 0.9
    assert "torchvision checkpoint mobilenet_v2-b0353104.pth" in described and "b03531047ffa" in described


def test_the_checkpoint_reads_as_torchvisions_state_dict(state_dict):
    assert state_dict["features.0.0.weight"].shape == (32, 3, 3, 3)
    assert state_dict["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert state_dict["classifier.1.weight"].shape == (1000, 1280)
    assert state_dict["features.0.0.weight"].dtype == np.float32
    assert len([k for k in state_dict if k.endswith("running_var")]) == 52


class _Global:
    """Pickles as a reference to `module.name` (what a hostile checkpoint contains)."""

    def __init__(self, module: str, name: str, args: tuple):
        self.module, self.name, self.args = module, name, args

    def __reduce__(self):
        fake = type(self.name, (), {"__module__": self.module, "__qualname__": self.name})
        return fake, self.args


def _hostile_pickle(module: str, name: str, args: tuple, stack_global: bool = False) -> bytes:
    # Written by hand (GLOBAL or STACK_GLOBAL, then REDUCE) so pickle never imports the target.
    if stack_global:
        strings = b"".join(b"\x8c" + bytes([len(x)]) + x.encode() for x in (module, name))
        return b"\x80\x04" + strings + b"\x93" + pickle.dumps(args, 4)[2:-1].lstrip(b"\x95") + b"R."
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, 2)[2:-1] + b"R."


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load")],
)
@pytest.mark.parametrize("layout", ["legacy", "zip", "stack_global"])
def test_hostile_pickles_are_refused_without_running_anything(tmp_path, module, name, layout):
    marker = tmp_path / "pwned"
    payload = _hostile_pickle(module, name, (f"touch {marker}",), stack_global=layout == "stack_global")
    path = tmp_path / "evil.pth"
    if layout in ("legacy", "stack_global"):
        head = b"".join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
        path.write_bytes(head + payload)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    with pytest.raises(GdlError, match=f"refusing to load {module}.{name} from evil.pth"):
        read_state_dict(path)
    assert not marker.exists()


def _zip_checkpoint(path, tensors: dict[str, tuple[np.ndarray, int, tuple, tuple]], monkeypatch) -> None:
    """A checkpoint in torch's zip layout: data.pkl naming torch's globals, raw storages beside.
    Stand-in `torch` modules exist only while pickling, so pickle can name their globals."""
    import types

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    float_storage = type("FloatStorage", (), {"__module__": "torch", "__qualname__": "FloatStorage"})
    rebuild = type(
        "_rebuild_tensor_v2", (), {"__module__": "torch._utils", "__qualname__": "_rebuild_tensor_v2"}
    )
    torch.FloatStorage, utils._rebuild_tensor_v2 = float_storage, rebuild
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Tensor:
        def __init__(self, storage, offset, size, stride):
            self.args = (storage, offset, size, stride, False, {})

        def __reduce__(self):
            return rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", float_storage, obj.key, "cpu", obj.numel)
            return None

    state, raws, storages = {}, {}, {}
    for name, (data, offset, size, stride) in tensors.items():
        if id(data) not in storages:  # tensors made from one array share its storage, as in torch
            key = str(len(storages))
            storages[id(data)] = Storage(key, data.size)
            raws[key] = data.astype("<f4").tobytes()
        state[name] = Tensor(storages[id(data)], offset, size, stride)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for key, raw in raws.items():
            zf.writestr(f"archive/data/{key}", raw)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")


def test_a_hostile_file_cannot_change_how_later_files_are_read(tmp_path):
    # BUILD on the FloatStorage stand-in, trying to make every later float tensor a double.
    payload = b"\x80\x02ctorch\nFloatStorage\n}X\x04\x00\x00\x00nameX\r\x00\x00\x00DoubleStorages\x00b."
    head = b"".join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    evil = tmp_path / "evil.pth"
    evil.write_bytes(head + payload)
    with pytest.raises(GdlError):
        read_state_dict(evil)
    assert read_state_dict(offline_mobilenet_v2_path())["features.0.0.weight"].dtype == np.float32


def test_zip_format_checkpoints_are_read_with_strides_and_offsets(tmp_path, monkeypatch):
    storage = np.arange(12, dtype=np.float32)
    path = tmp_path / "new.pth"
    _zip_checkpoint(
        path,
        {
            "plain": (storage, 0, (3, 4), (4, 1)),
            "transposed": (storage, 0, (4, 3), (1, 4)),
            "offset": (storage, 2, (2, 2), (4, 1)),
        },
        monkeypatch,
    )
    got = read_state_dict(path)
    np.testing.assert_array_equal(got["plain"], storage.reshape(3, 4))
    np.testing.assert_array_equal(got["transposed"], storage.reshape(3, 4).T)
    np.testing.assert_array_equal(got["offset"], [[2, 3], [6, 7]])
    _zip_checkpoint(path, {"past_the_end": (storage, 10, (2, 2), (4, 1))}, monkeypatch)
    with pytest.raises(GdlError, match="reaches past the end"):
        read_state_dict(path)
    _zip_checkpoint(path, {"broadcast": (storage, 0, (10**6, 10**6), (0, 0))}, monkeypatch)
    with pytest.raises(GdlError, match="claims more elements than storage"):
        read_state_dict(path)
    # Many distinct full views of one storage: more copies than the file's bytes allow.
    _zip_checkpoint(path, {f"copy{i}": (storage, 0, (12,), (1,)) for i in range(10)}, monkeypatch)
    with pytest.raises(GdlError, match="far more than the data the file holds"):
        read_state_dict(path)


def test_nested_pickles_and_non_tensor_contents_are_clear_errors(tmp_path):
    head = b"".join(pickle.dumps(x, 2) for x in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}))
    deep = tmp_path / "deep.pth"
    deep.write_bytes(head + b"\x80\x02" + b"]" * 100_000 + b".")  # EMPTY_LIST 100,000 deep
    with pytest.raises(GdlError, match="deep.pth"):
        read_state_dict(deep)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(head + pickle.dumps({"a": [1, 2]}, 2) + pickle.dumps([], 2))
    with pytest.raises(GdlError, match="does not hold a state dict"):
        read_state_dict(plain)


def test_truncated_and_oversized_checkpoints_are_clear_errors(tmp_path):
    original = offline_mobilenet_v2_path().read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(original[: len(original) // 2])
    with pytest.raises(GdlError, match="truncated.pth is truncated"):
        read_state_dict(truncated)
    # The first storage claims far more elements than the file holds: refused before allocating.
    keys_end = original.index(b"\x80\x02]", 100)  # the pickled list of storage keys
    keys_len = len(pickle.dumps(pickle.loads(original[keys_end:]), 2))
    at = keys_end + keys_len
    lying = original[:at] + struct.pack("<q", 10**15) + original[at + 8 :]
    oversized = tmp_path / "oversized.pth"
    oversized.write_bytes(lying)
    with pytest.raises(GdlError, match="is truncated: storage"):
        read_state_dict(oversized)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GdlError, match="garbage.pth"):
        read_state_dict(garbage)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, state_dict):
    model = build_mobilenet_v2((32, 32, 3), include_top=True)
    wrong = dict(state_dict)
    wrong["features.3.conv.1.0.weight"] = np.zeros((5, 1, 3, 3), np.float32)
    with pytest.raises(GdlError, match="features.3.conv.1.0 has shape"):
        load_torch_mobilenet_v2(model, wrong)
    missing = {k: v for k, v in state_dict.items() if not k.startswith("features.7.")}
    with pytest.raises(GdlError, match="missing features.7.conv"):
        load_torch_mobilenet_v2(model, missing)
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(GdlError, match="do not fit the mobilenet_v2 backbone"):
        load_backbone("mobilenet_v2", tmp_path / "other.weights.h5", input_shape=(32, 32, 3))
    # A Keras weights file landed under the catalog's .pth name (downloads keep the catalog's
    # file name) is recognised by its content.
    small = build_mobilenet_v2((32, 32, 3), include_top=False)
    small.save_weights(tmp_path / "mine.weights.h5")
    disguised = tmp_path / "mobilenet_v2-b0353104.pth"
    disguised.write_bytes((tmp_path / "mine.weights.h5").read_bytes())
    loaded, described = load_backbone("mobilenet_v2", disguised, input_shape=(32, 32, 3))
    assert "Keras weights mobilenet_v2-b0353104.pth" in described
    np.testing.assert_array_equal(
        loaded.get_layer("stem").get_weights()[0], small.get_layer("stem").get_weights()[0]
    )
    with pytest.raises(GdlError, match="torch checkpoints are read for mobilenet_v2 only"):
        load_backbone("vgg19", offline_mobilenet_v2_path(), input_shape=(32, 32, 3))


@pytest.mark.parametrize("name", BACKBONES)
def test_preprocessing_round_trips_and_steps_one_grey_level(name):
    img = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(deprocess(name, preprocess(name, img)), img)
    step = preprocess(name, img.astype(np.float32) + 1) - preprocess(name, img)
    np.testing.assert_allclose(step, np.broadcast_to(input_step(name), step.shape), rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "shape", "layers"),
    [
        ("vgg19", (32, 32, 3), ["block1_conv1", "block3_conv1", "block5_conv1", "block5_conv2"]),
        ("inception_v3", (75, 75, 3), ["mixed2", "mixed3", "mixed4", "mixed5"]),
        ("mobilenet_v2", (64, 64, 3), ["block_5", "block_10_expand_relu", "head_relu"]),
    ],
)
def test_every_backbone_exposes_the_books_layers(name, shape, layers):
    model, described = load_backbone(name, None, input_shape=shape)
    assert "random initialisation" in described
    features = feature_model(model, layers)
    out = features(np.zeros((1, *shape), np.float32))
    assert set(out) == set(layers)
    with pytest.raises(GdlError, match="unknown layer 'no_such_layer'.*valid: "):
        feature_model(model, ["no_such_layer"])
    # The same names are known before any model is built for a run (params validation).
    check_layers(name, layers)
    with pytest.raises(ValueError, match="unknown layer 'no_such_layer'.*valid: ") as info:
        check_layers(name, [layers[0], "no_such_layer"])
    listed = str(info.value).split("valid: ")[1].split(", ")
    assert set(layers) <= set(listed) and set(listed) <= set(layer_names(name))


def test_every_backbone_names_catalog_weights_with_and_without_the_classifier():
    from models.inputs.catalog import catalog

    entries = catalog()
    for name in BACKBONES:
        assert entries[weights_entry(name)].kind == "weights"
    assert weights_entry("inception_v3", top=True) == "inception_v3_imagenet"
    assert weights_entry("mobilenet_v2", top=True) == "mobilenet_v2_imagenet"
    with pytest.raises(GdlError, match="VGG19"):
        weights_entry("vgg19", top=True)
