"""Image and text encoders: preprocessing, EfficientNet weights, ONNX vs torch, tiny HF checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_images, save_clip_tokenizer, shared_dataset
from PIL import Image

from geoscope.encoders.image import available_image_encoders, get_image_encoder
from geoscope.encoders.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, Views
from geoscope.errors import GeoscopeError
from geoscope.images import open_image

# ---------------------------------------------------------------- preprocessing


def test_preprocess_shape_and_normalisation() -> None:
    pre = Preprocess(size=32, crop_size=24, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    image = Image.new("RGB", (64, 48), (255, 102, 0))
    out = pre(image)
    assert out.shape == (3, 24, 24) and out.dtype == np.float32
    expected = (np.array([1.0, 0.4, 0.0]) - np.array(pre.mean)) / np.array(pre.std)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, atol=1e-5)
    assert pre.resize(image).size == (43, 32)  # shorter side to 32, aspect kept


def test_views_crops_and_flip() -> None:
    pre = Preprocess(size=224, crop_size=224, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert pre.crop_boxes(448, 224, 3) == [(0, 0, 224, 224), (112, 0, 336, 224), (224, 0, 448, 224)]
    assert pre.crop_boxes(224, 448, 2) == [(0, 0, 224, 224), (0, 224, 224, 448)]
    rng = np.random.default_rng(0)
    square = Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8))
    plain, flipped = pre.views(square, Views()), pre.views(square, Views(hflip=True))
    np.testing.assert_array_equal(flipped, plain[..., ::-1])
    wide = Image.fromarray(rng.integers(0, 255, (224, 448, 3), dtype=np.uint8))
    grid = pre.views(wide, Views.parse("grid"))
    assert grid.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(grid[0], pre.to_array(wide.crop((0, 0, 224, 224))))


def test_views_parse() -> None:
    assert Views.parse(None) == Views()
    assert Views.parse("hflip+grid").key == "hflip+crops3"
    assert Views.parse("crops2") == Views(crops=2)
    assert Views.parse("plain").key == "plain"
    with pytest.raises(GeoscopeError, match="unknown view"):
        Views.parse("rotate")


def test_preprocess_round_trips_as_dict() -> None:
    pre = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert Preprocess.from_dict(json.loads(json.dumps(pre.to_dict()))) == pre


# ---------------------------------------------------------------- registry and EfficientNet


def test_unknown_names_are_clear() -> None:
    assert {"efficientnet-lite0", "efficientnet-lite2"} <= set(available_image_encoders())
    with pytest.raises(GeoscopeError, match=r"unknown image encoder 'resnet9000'.*efficientnet-lite0"):
        get_image_encoder("resnet9000")
    with pytest.raises(GeoscopeError, match="backend"):
        get_image_encoder("efficientnet-lite0", backend="tensorrt")
    with pytest.raises(GeoscopeError, match="trunk-<n>"):
        get_image_encoder("efficientnet-lite0/trunk-99")


def test_an_input_size_suffix_resizes_the_frame_and_keeps_the_features_shape() -> None:
    """``@<px>`` feeds the net larger (upsampled) frames: same outputs, finer detail, its own cache key."""
    base = get_image_encoder("efficientnet-lite0/stats")
    big = get_image_encoder("efficientnet-lite0/stats@320")
    assert big.preprocess.size == big.preprocess.crop_size == 320 and big.output_shape == base.output_shape
    assert big.fingerprint != base.fingerprint and big.name == "efficientnet-lite0/stats@320"
    frame = Image.fromarray(np.random.default_rng(3).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    assert big.preprocess(frame).shape == (3, 320, 320)
    x = np.random.default_rng(4).standard_normal((1, 3, 320, 320)).astype(np.float32)
    np.testing.assert_allclose(big.encode(x), get_image_encoder("efficientnet-lite0/stats@320", "torch").encode(x),
                               atol=1e-4)
    assert get_image_encoder("efficientnet-lite0/trunk-2@320").output_shape == (192, 10, 10)
    with pytest.raises(GeoscopeError, match=r"input size of 'efficientnet-lite0@4096' must be 32\.\.1024 px"):
        get_image_encoder("efficientnet-lite0@4096")


def test_efficientnet_weights_expect_our_normalisation() -> None:
    """The stem's batch-norm means are what ImageNet images give under mean = std = 0.5."""
    from geoscope.encoders.efficientnet import lite_preprocess, load_efficientnet

    net = load_efficientnet("efficientnet-lite0")
    pre = lite_preprocess("efficientnet-lite0")
    weight = net._conv_stem.weight.detach().sum(dim=(2, 3)).numpy()  # (32, 3)
    running_mean = net._bn0.running_mean.numpy()

    def stem_mean(mean: tuple, std: tuple) -> np.ndarray:  # stem output of a flat ImageNet-mean image
        return weight @ ((np.array(IMAGENET_MEAN) - np.array(mean)) / np.array(std))

    ours = np.corrcoef(stem_mean(pre.mean, pre.std), running_mean)[0, 1]
    assert ours > 0.9
    imagenet_scaled = stem_mean(IMAGENET_MEAN, IMAGENET_STD)
    assert np.abs(imagenet_scaled).max() < 1e-6  # that scaling would make these means all zero


def _street_images(n: int) -> list[Image.Image]:
    folder = shared_dataset("london-uk")
    paths = sorted((folder / "images").glob("*.jpg"))[:n]
    return [open_image(p) for p in paths]


@pytest.mark.shared_data
def test_onnx_matches_torch_on_real_images() -> None:
    images = _street_images(3)
    onnx_encoder = get_image_encoder("efficientnet-lite0")
    torch_encoder = get_image_encoder("efficientnet-lite0", backend="torch")
    batch = np.stack([onnx_encoder.preprocess(im) for im in images])
    a, b = onnx_encoder.encode(batch), torch_encoder.encode(batch)
    assert a.shape == (3, 1280) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max())
    np.testing.assert_allclose(onnx_encoder.encode(batch[:1]), a[:1], atol=1e-5)  # dynamic batch
    assert list(Path(_cache()).glob("onnx/efficientnet-lite0-*.onnx"))
    # the weights classify street images as ImageNet things, not noise
    import torch

    net = torch_encoder.torch_module().net
    with torch.inference_mode():
        probs = net(torch.from_numpy(batch)).softmax(dim=1).numpy()
    assert probs.max(axis=1).min() > 0.02  # far above uniform (0.001)


def _cache() -> str:
    import os

    return os.environ["GEOSCOPE_CACHE"]


def test_split_efficientnet_recomposes_and_trunk_encoder() -> None:
    import torch

    from geoscope.encoders import split_efficientnet

    trunk, top = split_efficientnet("efficientnet-lite0", 2)
    full = get_image_encoder("efficientnet-lite0", backend="torch")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32))
    with torch.inference_mode():
        maps = trunk(x)
        recomposed = top(maps).numpy()
    assert tuple(maps.shape) == (2, 192, 7, 7)
    np.testing.assert_allclose(recomposed, full.encode(x.numpy()), atol=1e-4)
    encoder = get_image_encoder("efficientnet-lite0/trunk-2")
    assert encoder.output_shape == (192, 7, 7) and encoder.dim == 192 * 49
    assert encoder.storage_dtype == "float16"
    np.testing.assert_allclose(encoder.encode(x.numpy()), maps.reshape(2, -1).numpy(), atol=1e-3)
    assert sum(p.numel() for p in top.parameters()) < sum(p.numel() for p in trunk.parameters()) * 3


def test_stage_statistics_hold_the_pooled_embedding_and_earlier_stages() -> None:
    stats = get_image_encoder("efficientnet-lite0/stats")
    plain = get_image_encoder("efficientnet-lite0")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    out = stats.encode(x)
    assert stats.output_shape == (4048,) and out.shape == (2, 4048)
    assert stats.spec.mixed_scales and not plain.spec.mixed_scales
    np.testing.assert_allclose(get_image_encoder("efficientnet-lite0/stats", "torch").encode(x), out, atol=1e-4)
    head = slice(4048 - 2 * 1280, 4048 - 1280)  # then the head's std
    np.testing.assert_allclose(out[:, head], plain.encode(x), atol=1e-4)
    assert (out[:, head.stop :] >= 0).all() and out[:, : head.start].std() > 0.1
    # a flat grey image has (almost) no spatial spread in any stage, a noisy one has plenty
    flat = stats.encode(np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert flat[0, head.stop :].mean() < out[:, head.stop :].mean()


def test_layout_adds_each_stage_averaged_over_six_bands_of_the_frame() -> None:
    stats, layout = get_image_encoder("efficientnet-lite0/stats"), get_image_encoder("efficientnet-lite0/layout")
    tapped = (4048 - 2 * 1280) // 2  # channels of the tapped stages
    assert layout.output_shape == (4048 + 6 * tapped,) and layout.spec.mixed_scales
    assert layout.cache_key != stats.cache_key
    x = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    x[1, :, 150:] = 0.0  # a flat bottom third in the second image
    out = layout.encode(x)
    np.testing.assert_allclose(get_image_encoder("efficientnet-lite0/layout", "torch").encode(x), out, atol=1e-4)
    np.testing.assert_allclose(out[:, :4048], stats.encode(x), atol=1e-4)
    # the first tapped stage (40 channels on 28 rows) comes first: its mean over the frame, then its six
    # bands (5, 4, 5, 5, 4, 5 rows); the frame's mean is the bands' mean weighted by their rows
    first, rows = 40, (5, 4, 5, 5, 4, 5)
    bands = [out[:, 4048 + k * first : 4048 + (k + 1) * first] for k in range(6)]
    np.testing.assert_allclose(sum(r * b for r, b in zip(rows, bands, strict=True)) / 28, out[:, :first], atol=1e-3)
    top, bottom = bands[0], bands[-1]
    assert np.abs(bottom[1] - bottom[0]).mean() > np.abs(top[1] - top[0]).mean()


def test_stages_is_the_layout_without_the_head_convs_statistics() -> None:
    layout, stages = get_image_encoder("efficientnet-lite0/layout"), get_image_encoder("efficientnet-lite0/stages")
    tapped = (4048 - 2 * 1280) // 2
    assert stages.output_shape == (8 * tapped,) and stages.cache_key != layout.cache_key
    x = np.random.default_rng(4).standard_normal((2, 3, 224, 224)).astype(np.float32)
    full = layout.encode(x)
    kept = np.r_[0 : 2 * tapped, 4048 : full.shape[1]]  # the stages' statistics, then their bands
    np.testing.assert_allclose(stages.encode(x), full[:, kept], atol=1e-4)


def test_a_joint_encoder_gives_each_part_the_frame_it_wants_and_concatenates_their_outputs() -> None:
    joint = get_image_encoder(" efficientnet-lite0/stats + efficientnet-lite2 ")
    lite0, lite2 = get_image_encoder("efficientnet-lite0/stats"), get_image_encoder("efficientnet-lite2")
    assert joint.name == "efficientnet-lite0/stats+efficientnet-lite2"
    assert joint.preprocess == lite2.preprocess  # the largest input; the graph resizes for Lite0
    assert joint.output_shape == (lite0.dim + lite2.dim,) and joint.spec.mixed_scales
    assert joint.cache_key not in {lite0.cache_key, lite2.cache_key}
    images = [open_image(p) for p in sorted((REPO / "examples" / "images").glob("*.jpg"))[:3]]
    out = joint.encode(np.stack([joint.preprocess(im) for im in images]))
    np.testing.assert_allclose(out[:, lite0.dim :], lite2.encode(np.stack([lite2.preprocess(im) for im in images])),
                               atol=1e-4)
    own = lite0.encode(np.stack([lite0.preprocess(im) for im in images]))  # resized once, by PIL
    for a, b in zip(out[:, : lite0.dim], own, strict=True):
        assert np.corrcoef(a, b)[0, 1] > 0.99
    # parts with other normalisations are renormalised inside the graph: same part, same output
    from geoscope.encoders.image import EncoderSpec, fingerprint
    from geoscope.encoders.joint import joint_spec

    imagenet = Preprocess(size=224, crop_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    lite0_spec = lite0.spec

    def spec(name: str) -> EncoderSpec:
        if name == "imagenet-lite0":
            return EncoderSpec(name, imagenet, lite0_spec.output_shape, fingerprint(name), _imagenet_lite0)
        return lite0_spec

    both = joint_spec("efficientnet-lite0/stats+imagenet-lite0", spec).build().eval()
    x = torch.from_numpy(np.stack([lite0.preprocess(im) for im in images]))
    with torch.inference_mode():
        twice = both(x).numpy()
    np.testing.assert_allclose(twice[:, : lite0.dim], twice[:, lite0.dim :], atol=1e-4)


def _imagenet_lite0() -> torch.nn.Module:
    """Lite0's stage statistics behind a conversion from ImageNet normalisation to Lite's own."""
    from geoscope.encoders.efficientnet import LITE_MEAN, LITE_STD

    stats = get_image_encoder("efficientnet-lite0/stats").torch_module()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    lite_mean, lite_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (LITE_MEAN, LITE_STD))

    class FromImagenet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return stats((x * std + mean - lite_mean) / lite_std)

    return FromImagenet()


@pytest.mark.parametrize(("name", "message"), [
    ("efficientnet-lite0/stats+", "two or more encoder names"),
    ("efficientnet-lite0+efficientnet-lite0", "names an encoder twice"),
    ("efficientnet-lite0+efficientnet-lite2/trunk-2", "gives feature maps"),
    ("efficientnet-lite0+resnet9000", "unknown image encoder 'resnet9000'"),
])
def test_a_joint_encoder_refuses_what_it_cannot_join(name: str, message: str) -> None:
    with pytest.raises(GeoscopeError, match=message):
        get_image_encoder(name)


# ---------------------------------------------------------------- tiny Hugging Face checkpoints


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random CLIP, ResNet and DistilBERT checkpoints saved to folders, with tokenizers."""
    import transformers

    root = tmp_path_factory.mktemp("hf")
    letters = "abcdefghijklmnopqrstuvwxyz"
    clip_vocab = {c: i for i, c in enumerate(letters)}
    clip_vocab.update({f"{c}</w>": 26 + i for i, c in enumerate(letters)})
    clip_vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    clip_config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 54, "max_position_embeddings": 32,
                     "bos_token_id": 52, "eos_token_id": 53, "pad_token_id": 53},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    paths = {"clip": root / "clip", "resnet": root / "resnet", "distilbert": root / "distilbert"}
    transformers.CLIPModel(clip_config).save_pretrained(paths["clip"])
    save_clip_tokenizer(clip_vocab, paths["clip"])
    (paths["clip"] / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, "do_normalize": True,
        "do_rescale": True, "do_resize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
        "rescale_factor": 1 / 255, "size": {"shortest_edge": 32},
    }))
    resnet = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="bottleneck")
    transformers.ResNetModel(resnet).save_pretrained(paths["resnet"])
    (paths["resnet"] / "preprocessor_config.json").write_text(json.dumps({
        "crop_pct": 0.875, "do_normalize": True, "do_resize": True, "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD), "resample": 3, "size": {"shortest_edge": 28},
    }))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
             "london", "paris", "ontario", "uk"]
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(paths["distilbert"])
    distil = transformers.DistilBertConfig(vocab_size=len(vocab), dim=16, hidden_dim=32, n_layers=1,
                                           n_heads=2, max_position_embeddings=64)
    transformers.DistilBertModel(distil).save_pretrained(paths["distilbert"])
    return paths


def test_hf_clip_image_and_text_by_path(tiny_hf: dict[str, Path]) -> None:
    import torch
    import transformers

    from geoscope.encoders.text import get_text_encoder

    name = f"hf:{tiny_hf['clip']}"
    encoder = get_image_encoder(name)
    assert encoder.dim == 8
    pre = encoder.preprocess
    assert (pre.size, pre.crop_size, pre.resample) == (32, 32, "bicubic")
    assert pre.mean[0] == pytest.approx(0.48145466)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    batch = np.stack([pre(image), pre(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    a = encoder.encode(batch)
    b = get_image_encoder(name, backend="torch").encode(batch)
    np.testing.assert_allclose(a, b, atol=1e-4)
    model = transformers.CLIPModel.from_pretrained(tiny_hf["clip"]).eval()
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=torch.from_numpy(batch)).pooler_output
        np.testing.assert_allclose(b, model.visual_projection(vision).numpy(), atol=1e-5)

    text = get_text_encoder(name)
    assert text.dim == 8
    out = text.encode(["london", "paris ontario"])
    assert out.shape == (2, 8) and np.isfinite(out).all()
    tokens = text.tokenize(["london"])
    with torch.inference_mode():
        hidden = model.text_model(**tokens).pooler_output
        np.testing.assert_allclose(out[:1], model.text_projection(hidden).numpy(), atol=1e-5)
    assert "torchvision" not in sys.modules


def test_hf_resnet_by_path(tiny_hf: dict[str, Path]) -> None:
    encoder = get_image_encoder(f"hf:{tiny_hf['resnet']}")
    assert encoder.dim == 16
    assert (encoder.preprocess.size, encoder.preprocess.crop_size) == (32, 28)  # 28 / 0.875
    batch = np.random.default_rng(3).standard_normal((3, 3, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(encoder.encode(batch),
                               get_image_encoder(f"hf:{tiny_hf['resnet']}", "torch").encode(batch), atol=1e-4)


def test_hf_distilbert_pooling(tiny_hf: dict[str, Path]) -> None:
    import torch
    import transformers

    from geoscope.encoders.text import get_text_encoder

    mean = get_text_encoder(f"hf:{tiny_hf['distilbert']}")
    cls = get_text_encoder(f"hf:{tiny_hf['distilbert']}", pooling="cls")
    texts = ["london uk", "paris"]
    a, b = mean.encode(texts), cls.encode(texts)
    assert a.shape == b.shape == (2, 16)
    model = transformers.DistilBertModel.from_pretrained(tiny_hf["distilbert"]).eval()
    tokens = mean.tokenize(texts)
    with torch.inference_mode():
        hidden = model(**tokens).last_hidden_state.numpy()
    mask = tokens["attention_mask"].numpy()[..., None]
    np.testing.assert_allclose(a, (hidden * mask).sum(1) / mask.sum(1), atol=1e-5)
    np.testing.assert_allclose(b, hidden[:, 0], atol=1e-5)
    assert isinstance(mean.torch_module(), torch.nn.Module)


def test_hf_hub_name_loads_from_the_offline_cache(tmp_path: Path, tiny_hf: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A repository name resolves through the Hugging Face cache, as for a user who fetched it once."""
    import shutil

    from huggingface_hub import constants

    from geoscope.encoders.text import get_text_encoder

    commit = "0" * 40
    for repo, folder in (("tiny/resnet", tiny_hf["resnet"]), ("tiny/clip", tiny_hf["clip"])):
        entry = tmp_path / f"models--{repo.replace('/', '--')}"
        shutil.copytree(folder, entry / "snapshots" / commit)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    encoder = get_image_encoder("hf:tiny/resnet", backend="torch")
    assert encoder.dim == 16 and encoder.preprocess.crop_size == 28
    assert encoder.encode(np.zeros((1, 3, 28, 28), dtype=np.float32)).shape == (1, 16)
    assert get_text_encoder("hf:tiny/clip").encode(["paris"]).shape == (1, 8)
    with pytest.raises(GeoscopeError, match="not in the local cache"):
        get_image_encoder("hf:openai/clip-vit-base-patch32")


@pytest.mark.parametrize(("values", "expected"), [
    # openai/clip-vit-base-patch32 (older integer form)
    ({"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
      "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
      "size": 224}, (224, 224, "bicubic", True)),
    # microsoft/resnet-50: resize to 224 / 0.875, crop 224
    ({"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
      "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224}, (256, 224, "bicubic", True)),
    # google/vit-base-patch16-224: squash to 224×224, bilinear, mean = std = 0.5
    ({"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
      "resample": 2, "size": {"height": 224, "width": 224}}, (224, 224, "bilinear", False)),
])
def test_hf_preprocess_reads_real_configs(tmp_path: Path, values: dict, expected: tuple) -> None:
    from geoscope.encoders.hub import hf_preprocess

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(values))
    pre = hf_preprocess(str(tmp_path), "clip", None)
    assert (pre.size, pre.crop_size, pre.resample, pre.keep_aspect) == expected
    assert pre.mean == pytest.approx(tuple(values["image_mean"]))


def test_hf_errors_are_one_line(tmp_path: Path, tiny_hf: dict[str, Path]) -> None:
    from geoscope.encoders.text import get_text_encoder

    with pytest.raises(GeoscopeError, match=r"no config\.json"):
        get_image_encoder(f"hf:{tmp_path}")
    with pytest.raises(GeoscopeError, match="text model"):
        get_image_encoder(f"hf:{tiny_hf['distilbert']}")
    with pytest.raises(GeoscopeError, match="unknown text encoder"):
        get_text_encoder("word2vec")


def test_minilm_places_similar_names_together() -> None:
    from geoscope.encoders.text import get_text_encoder

    encoder = get_text_encoder("minilm")
    assert encoder.dim == 384
    v = encoder.encode(["London, UK", "London, England", "Zagreb, Croatia"])
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_image_side_cached_trunk_and_pretrained_top_give_the_frozen_features(tmp_path: Path) -> None:
    from geoscope.models.image_side import ImageSide, apply_adapter

    paths = make_images(tmp_path / "wide", 6, size=(200, 100))
    frozen = ImageSide("efficientnet-lite0", 0, crops=2)
    tuned = ImageSide("efficientnet-lite0", 1, crops=2)
    expected = frozen.extract(paths, progress=False).embeddings  # full net, crops averaged
    maps = tuned.extract(paths, progress=False).embeddings  # cached trunk maps, both crops side by side
    assert maps.shape == (6, 2 * int(np.prod(get_image_encoder(tuned.cached_encoder).output_shape)))
    adapter = tuned.adapter()
    got = apply_adapter(adapter, maps)
    assert np.abs(got - expected).max() < 2e-2 * np.abs(expected).max()  # trunk maps are cached as float16

    adapter.train()  # training: random windows of the maps, batch-norm statistics untouched
    before = {k: v.clone() for k, v in adapter.state_dict().items() if "running" in k}
    out = adapter(torch.from_numpy(maps))
    assert out.shape == (6, 1280) and not torch.allclose(out, torch.from_numpy(got), atol=1e-3)
    assert all(torch.equal(v, adapter.state_dict()[k]) for k, v in before.items())
