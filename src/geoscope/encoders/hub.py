"""Encoders from Hugging Face ``transformers`` checkpoints: ``hf:<repo-or-local-path>``.

Images: CLIP (vision tower + projection → image embeds), ResNet (pooled output) and
other vision models through ``AutoModel`` (pooled output, else the first token).
Text: CLIP text towers (text embeds) and BERT-like models (mean or CLS pooling,
following a sentence-transformers folder's pooling and normalisation when present).
Preprocessing is read from ``preprocessor_config.json`` as plain values and applied by
our own :class:`Preprocess`, so no image processor (nor torchvision) is involved.
A repository name is fetched into the Hugging Face cache on first use. What is cached is
used first; the hub gets one short try (no retries) per repository and process; when it
cannot be reached (or ``HF_HUB_OFFLINE`` is set) a cached snapshot loads from disk, and a
repository that is not cached fails at once, in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GeoscopeError, quote_name
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, RESAMPLE, Preprocess
from .spec import EncoderSpec, fingerprint

if TYPE_CHECKING:
    from torch import nn


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_PIL_CODES = {int(v): k for k, v in RESAMPLE.items()}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
PROBE_TIMEOUT_S = 5.0
"""How long the one try to reach the hub may take."""
_HUB_STATE: dict[str, str] = {}
"""Repository → ``ok``, ``missing`` or ``unreachable``: what its one try found (once per process)."""


def split_ref(name: str) -> str:
    """The repository id or folder of an ``hf:`` name (``hf:`` prefix optional)."""
    ref = name[3:] if name.startswith("hf:") else name
    ref = ref.strip()
    if not ref:
        raise GeoscopeError("hf: needs a repository or folder, e.g. hf:openai/clip-vit-base-patch32")
    return ref


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info logging and progress bars while loading, then restore them."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def hub_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``, read now or at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {
        "1", "true", "yes", "on"}


def _hub_state(ref: str) -> str:
    """One short try (no retries) to reach a hub repository: ``ok``, ``missing`` or ``unreachable``."""
    if hub_offline():
        return "unreachable"
    if ref not in _HUB_STATE:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

        try:
            get_hf_file_metadata(hf_hub_url(ref, "config.json"), timeout=PROBE_TIMEOUT_S, retry_on_errors=False)
            _HUB_STATE[ref] = "ok"
        except EntryNotFoundError:
            _HUB_STATE[ref] = "ok"  # the repository is there; the missing file is reported when it is needed
        except RepositoryNotFoundError:
            _HUB_STATE[ref] = "missing"
        except Exception:  # no network, DNS, timeout, proxy, server error: all mean "not now"
            _HUB_STATE[ref] = "unreachable"
    return _HUB_STATE[ref]


def _cached_snapshot(ref: str) -> Path | None:
    """The folder of the cached snapshot of a hub repository (holding its config.json), if any."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(found).parent if isinstance(found, str) else None


def locate(ref: str) -> str:
    """Where to load a checkpoint from: a local folder as it is; a hub repository by name when the hub
    answers, else from its cached snapshot folder. Raises one line when it is neither here nor reachable."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        return str(folder)
    if os.sep in ref and ref.startswith((".", "/", "~")):
        raise GeoscopeError(f"{quote_name(ref)}: folder not found")
    state = _hub_state(ref)
    if state == "ok":
        return ref
    snapshot = _cached_snapshot(ref)
    if snapshot is not None:
        return str(snapshot)
    if state == "missing":
        raise GeoscopeError(f"hf:{ref}: no such repository on the Hugging Face hub (or it is private or gated)")
    raise GeoscopeError(f"cannot fetch {ref!r} from the Hugging Face hub (offline?) and it is not in the local cache")


def fetch_file(ref: str, filename: str, *, required: bool = True) -> Path | None:
    """One file of a local folder or hub repository: from the cache first, else downloaded (see :func:`locate`)."""
    folder = Path(ref).expanduser()
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if required:
            raise GeoscopeError(f"{quote_name(folder)}: no {filename} (not a transformers checkpoint folder)")
        return None
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    source = locate(ref)  # one line at once when the hub is out of reach and nothing is cached
    cached = try_to_load_from_cache(ref, filename)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None or source != ref:  # known to be absent, or offline and not cached
        if required:
            where = "repository has no" if cached is not None else "hub cannot be reached and the cache has no"
            raise GeoscopeError(f"hf:{ref}: {where} {filename}")
        return None
    try:
        return Path(hf_hub_download(ref, filename))
    except LocalEntryNotFoundError:
        if required:
            raise GeoscopeError(
                f"hf:{ref}: {filename} is not in the Hugging Face cache and the hub cannot be reached "
                "(connect once, or pass a local folder)"
            ) from None
        return None
    except EntryNotFoundError:
        if required:
            raise GeoscopeError(f"hf:{ref}: repository has no {filename}") from None
        return None
    except Exception as exc:  # offline, unknown repo, gated, bad name: all reported the same way
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoscopeError(
            f"hf:{ref}: cannot get {filename} (not a local folder, not in the Hugging Face cache, "
            f"and the hub said: {first})"
        ) from None


def read_json(ref: str, filename: str, *, required: bool = True) -> dict | None:
    """A JSON file of a checkpoint as a dict (``None`` when optional and absent)."""
    path = fetch_file(ref, filename, required=required)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeoscopeError(f"{path}: cannot read JSON ({exc})") from None


def checkpoint_identity(ref: str) -> str:
    """What changes when the checkpoint changes: config text plus weights' sizes/times or the hub commit."""
    config_path = fetch_file(ref, "config.json")
    assert config_path is not None
    parts = [config_path.read_text(encoding="utf-8")]
    folder = config_path.parent
    if Path(ref).expanduser().is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix in _WEIGHT_SUFFIXES:
                stat = path.stat()
                parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    else:
        parts.append(f"{ref}@{folder.name}")  # snapshots/<commit>/config.json
    return "\n".join(parts)


def load_config(ref: str) -> Any:
    """The ``transformers`` config of a checkpoint."""
    from transformers import AutoConfig

    fetch_file(ref, "config.json")  # clear error first
    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(locate(ref))
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoscopeError(f"hf:{ref}: cannot read its config ({first})") from None


def load_model(cls: Any, ref: str) -> Any:
    """``cls.from_pretrained(ref)`` in eval mode, with one-line errors."""
    try:
        with quiet_transformers():
            return cls.from_pretrained(locate(ref)).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoscopeError(f"hf:{ref}: cannot load the model ({first})") from None


def hf_preprocess(ref: str, model_type: str, config: Any) -> Preprocess:
    """Our :class:`Preprocess` from the checkpoint's ``preprocessor_config.json`` values."""
    values = read_json(ref, "preprocessor_config.json", required=False)
    if values is None:
        return _default_preprocess(ref, model_type, config)
    size_value = values.get("size", 224)
    crop = values.get("crop_size")
    keep_aspect = True
    if isinstance(size_value, dict):
        if "shortest_edge" in size_value:
            size = int(size_value["shortest_edge"])
        elif "height" in size_value and "width" in size_value:
            size, keep_aspect = int(size_value["height"]), False
            if size_value["height"] != size_value["width"]:
                raise GeoscopeError(f"hf:{ref}: non-square input size {size_value} is not supported")
        else:
            raise GeoscopeError(f"hf:{ref}: unsupported 'size' {size_value} in preprocessor_config.json")
    else:
        size = int(size_value)
    crop_pct = values.get("crop_pct")
    if crop_pct and keep_aspect and size < 384:  # ConvNeXt/ResNet processors: resize, then crop `size`
        size, crop = round(size / float(crop_pct)), size
    if values.get("do_center_crop", crop is not None) and crop is not None:
        crop_size = int(crop["height"] if isinstance(crop, dict) else crop)
    else:
        crop_size = size
    scale = float(values.get("rescale_factor", 1 / 255)) * 255 if values.get("do_rescale", True) else 1.0
    if values.get("do_normalize", True):
        mean = tuple(float(m) / scale for m in values.get("image_mean", IMAGENET_MEAN))
        std = tuple(float(s) / scale for s in values.get("image_std", IMAGENET_STD))
    else:
        mean, std = (0.0, 0.0, 0.0), (1 / scale,) * 3
    resample = _PIL_CODES.get(int(values.get("resample", 3)), "bicubic")
    return Preprocess(size, min(crop_size, size), mean, std, resample, keep_aspect)  # type: ignore[arg-type]


def _default_preprocess(ref: str, model_type: str, config: Any) -> Preprocess:
    if model_type in ("clip", "clip_vision_model"):
        vision = getattr(config, "vision_config", config)
        size = int(getattr(vision, "image_size", 224))
        return Preprocess(size, size, CLIP_MEAN, CLIP_STD, "bicubic")
    if model_type == "resnet":
        return Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    raise GeoscopeError(f"hf:{ref}: no preprocessor_config.json, so its preprocessing is unknown")


@dataclass(frozen=True)
class HFImageModel:
    """How to build one kind of vision checkpoint: model class name and output size."""

    model_type: str
    dim: int


def _image_kind(ref: str, config: Any) -> HFImageModel:
    model_type = config.model_type
    if model_type == "clip":
        return HFImageModel(model_type, int(config.projection_dim))
    if model_type == "clip_vision_model":
        return HFImageModel(model_type, int(getattr(config, "projection_dim", config.hidden_size)))
    if model_type == "resnet":
        return HFImageModel(model_type, int(config.hidden_sizes[-1]))
    if model_type in ("clip_text_model", "bert", "distilbert", "roberta", "mpnet", "t5"):
        raise GeoscopeError(f"hf:{ref} is a text model ({model_type}), not an image encoder")
    hidden = getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or [None])[-1]
    if not hidden:
        raise GeoscopeError(f"hf:{ref}: unsupported model type {model_type!r} for images")
    return HFImageModel(model_type, int(hidden))


def hf_image_spec(name: str) -> EncoderSpec:
    """The :class:`~geoscope.encoders.image.EncoderSpec` of an ``hf:`` vision checkpoint."""
    ref = split_ref(name)
    config = load_config(ref)
    kind = _image_kind(ref, config)
    preprocess = hf_preprocess(ref, kind.model_type, config)
    identity = fingerprint("hf-image/1", kind.model_type, preprocess.key, checkpoint_identity(ref))
    return EncoderSpec(f"hf:{ref}", preprocess, (kind.dim,), identity,
                       build=lambda: build_image_module(ref, kind.model_type))


def build_image_module(ref: str, model_type: str) -> nn.Module:
    """The torch module (pixels → embedding) of a vision checkpoint."""
    import transformers

    from .hf_modules import ClipImageEmbedding, PooledImageModel

    if model_type == "clip":
        model = load_model(transformers.CLIPModel, ref)
        return ClipImageEmbedding(model.vision_model, model.visual_projection).eval()
    if model_type == "clip_vision_model":
        model = load_model(transformers.CLIPVisionModelWithProjection, ref)
        return ClipImageEmbedding(model.vision_model, model.visual_projection).eval()
    if model_type == "resnet":
        return PooledImageModel(load_model(transformers.ResNetModel, ref)).eval()
    return PooledImageModel(load_model(transformers.AutoModel, ref)).eval()


@dataclass
class HFTextParts:
    """A loaded text checkpoint: the pooled torch module, its tokenizer and limits."""

    module: Any
    tokenizer: Any
    dim: int
    max_length: int
    logit_scale: float | None = None
    """A whole CLIP checkpoint's learned image–text logit scale (for zero-shot use); None otherwise."""


def load_text_parts(name: str, pooling: str | None = None) -> HFTextParts:
    """Load a text checkpoint (``hf:`` name or folder) with its pooling and tokenizer.

    ``pooling`` is ``mean`` or ``cls`` for BERT-like models; by default it follows a
    sentence-transformers ``1_Pooling`` folder, else ``mean``. CLIP towers use their
    own (end-of-text token + projection).
    """
    import transformers

    from .hf_modules import ClipTextEmbedding, PooledTextModel

    ref = split_ref(name)
    config = load_config(ref)
    tokenizer = _load_tokenizer(ref)
    model_type = config.model_type
    if model_type in ("clip", "clip_text_model"):
        if model_type == "clip":  # the whole model: its config, not the tower's, knows the projection
            model = load_model(transformers.CLIPModel, ref)
        else:
            model = load_model(transformers.CLIPTextModelWithProjection, ref)
        module = ClipTextEmbedding(model.text_model, model.text_projection).eval()
        text_config = getattr(config, "text_config", config)
        dim = int(getattr(config, "projection_dim", text_config.hidden_size))
        scale = float(model.logit_scale.detach().exp()) if model_type == "clip" else None
        return HFTextParts(module, tokenizer, dim, int(text_config.max_position_embeddings), scale)
    hidden = getattr(config, "hidden_size", None)
    if not hidden or model_type in ("resnet", "vit", "clip_vision_model"):
        raise GeoscopeError(f"hf:{ref}: {model_type!r} is not a supported text model")
    st_pooling, normalize, st_max = _sentence_transformers_settings(ref)
    pooling = pooling or st_pooling or "mean"
    if pooling not in ("mean", "cls"):
        raise GeoscopeError(f"text pooling must be 'mean' or 'cls', not {pooling!r}")
    model = load_model(transformers.AutoModel, ref)
    max_length = min(st_max or 10**9, int(getattr(config, "max_position_embeddings", 512)))
    return HFTextParts(PooledTextModel(model, pooling, normalize).eval(), tokenizer, int(hidden), max_length)


def _load_tokenizer(ref: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(locate(ref))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoscopeError(f"hf:{ref}: cannot load its tokenizer ({first})") from None


def _sentence_transformers_settings(ref: str) -> tuple[str | None, bool, int | None]:
    """(pooling, normalise, max length) from a sentence-transformers folder, if it is one."""
    modules = read_json(ref, "modules.json", required=False)
    if not isinstance(modules, list):
        return None, False, None
    pooling, normalize = None, False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind.endswith("Pooling"):
            settings = read_json(ref, f"{module.get('path', '1_Pooling')}/config.json", required=False) or {}
            pooling = "cls" if settings.get("pooling_mode_cls_token") else "mean"
        normalize = normalize or kind.endswith("Normalize")
    bert = read_json(ref, "sentence_bert_config.json", required=False) or {}
    return pooling, normalize, bert.get("max_seq_length")
