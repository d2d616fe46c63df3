"""Qwen3.5 hybrid fast decoder (executor/hybrid.py, executor/deltanet.py): logits against transformers' own
`qwen3_5` in float32, the DeltaNet state ring rewinding with a crop, published shapes, SPD lossless with rejects,
the drafter's Qwen3.5 spec layer against `Qwen3_5DecoderLayer`, and compile_layers' keywords (backend, gemv)."""

import copy

import pytest
import torch
from executor_tiny import assert_lossless, greedy_ar, prompts
from transformers import AutoConfig, AutoModelForCausalLM

from executor.heads.layers import DecoderLayer, LayerShape, base_config_of, base_rotary
from executor.hybrid import HybridConfig, HybridModel
from executor.model_presets import PRESETS
from executor.schedules import run_method

VOCAB = PRESETS["tiny-qwen3.5"]["vocab_size"]


def hf_tiny(initializer_range=None, seed=0, perturb=True):
    fields = dict(PRESETS["tiny-qwen3.5"])
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    if initializer_range is not None:
        fields["initializer_range"] = initializer_range
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **fields)).eval()
        if perturb:  # HF inits the zero-centred norms to 0 and dt_bias to 1: move them so conventions matter
            with torch.no_grad():
                for name, param in hf.named_parameters():
                    if "norm" in name or "dt_bias" in name:
                        param.add_(0.3 * torch.randn_like(param))
    return hf


@pytest.fixture(scope="module")
def hf_model():
    return hf_tiny(initializer_range=0.02)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, VOCAB, (1, 90), generator=torch.Generator().manual_seed(3))


def test_tiny_preset_is_the_published_layer_pattern(hf_model):
    cfg = HybridConfig.from_hf(hf_model.config)
    assert cfg.layer_types == ("linear_attention",) * 3 + ("full_attention",) + ("linear_attention",) * 3 + (
        "full_attention",
    )
    assert cfg.rotary_dim == cfg.head_dim // 4
    assert cfg.num_parameters() == sum(p.numel() for p in hf_model.parameters())


@pytest.mark.parametrize("name,layers,params_b", [("qwen3.5-4b", 32, 4.2), ("qwen3.5-9b", 32, 8.95)])
def test_published_presets_count_their_parameters_like_transformers(name, layers, params_b):
    fields = dict(PRESETS[name])
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    config = AutoConfig.for_model(model_type, **fields)
    with torch.device("meta"):
        hf = AutoModelForCausalLM.from_config(config)
    cfg = HybridConfig.from_hf(config)
    assert cfg.num_layers == layers and len(cfg.linear_layers) == 24
    assert cfg.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert abs(cfg.num_parameters() / 1e9 - params_b) < 0.3


def test_logits_match_transformers_in_float32(hf_model, ids):
    fast = HybridModel.from_hf(hf_model, max_seq_len=256)
    with torch.inference_mode():
        reference = hf_model(ids).logits
        prefill = fast(ids, torch.arange(ids.shape[1]), fast.new_cache(256))
        cache = fast.new_cache(256)
        steps = [fast(ids[:, :70], torch.arange(70), cache)]  # chunked recurrence (> 16 tokens)
        steps += [fast(ids[:, p : p + 1], torch.tensor([p]), cache, kv_len=256) for p in range(70, 90)]
    assert (prefill - reference).abs().max() < 1e-5
    assert (torch.cat(steps, dim=1) - reference).abs().max() < 1e-5


def test_logits_at_the_preset_init_match_to_float32_rounding(ids):
    hf = hf_tiny()  # the preset's wide init (0.2): activations of tens, so compare relative to their scale
    fast = HybridModel.from_hf(hf, max_seq_len=256)
    with torch.inference_mode():
        reference = hf(ids).logits
        logits = fast(ids, torch.arange(ids.shape[1]), fast.new_cache(256))
    assert (logits - reference).abs().max() / reference.abs().max() < 1e-4


def test_crop_rewinds_the_deltanet_state_and_the_kv(hf_model, ids):
    fast = HybridModel.from_hf(hf_model, max_seq_len=256)
    with torch.inference_mode():
        reference = hf_model(ids[:, :40]).logits
        cache = fast.new_cache(256)
        fast(ids[:, :30], torch.arange(30), cache)
        # position 30 right, 31..36 wrong (to be rejected): a multi-token block, then single steps
        wrong = torch.cat((ids[:, 30:31], (ids[:, 31:37] + 1) % VOCAB), dim=1)
        fast(wrong[:, :4], torch.arange(30, 34), cache)
        for p in range(34, 37):
            fast(wrong[:, p - 30 : p - 29], torch.tensor([p]), cache)
        cache.crop(31)
        assert cache.length(0) == 31
        again = fast(ids[:, 31:40], torch.arange(31, 40), cache)
    assert (again - reference[:, 31:40]).abs().max() < 1e-5


def test_model_api_and_cache_shapes(hf_model):
    fast = HybridModel.from_hf(hf_model, max_seq_len=256)
    cache = fast.new_cache(64)
    assert (
        fast.num_layers == 8 and fast.dtype == torch.float32 and cache.max_len == 256
    )  # the whole context (max_seq_len)
    assert cache.keys[0].shape[2] == 0 and cache.keys[3].shape[2] == 256
    assert cache.state_rings[0].dtype == torch.float32 and cache.state_rings[3] is None
    assert base_config_of(fast).model_type == "qwen3_5_text"


@pytest.fixture(scope="module")
def fast_model():
    return HybridModel.from_hf(hf_tiny(), max_seq_len=256)


NEW = 14


@pytest.fixture(scope="module")
def prompt_set():
    return prompts(count=3, seed=5, vocab=VOCAB)


@pytest.fixture(scope="module")
def reference(fast_model, prompt_set):
    return greedy_ar(fast_model, prompt_set, NEW)


@pytest.mark.parametrize("stages", [2, 4])
def test_spd_with_rejects_is_lossless(fast_model, prompt_set, reference, stages):
    result = run_method(
        "spd", fast_model, prompt_set, max_new_tokens=NEW, stages=stages, synthetic_alpha=0.6, spec_layers=1
    )
    assert_lossless(result, reference)
    rejected = sum(1 for run in result.prompts for row in run.trace if not row["accepted"])
    assert rejected > 0


def test_chain_speculation_rewinds_inside_the_verify_block(fast_model, prompt_set, reference):
    draft = HybridModel.from_hf(hf_tiny(seed=9), max_seq_len=256)
    result = run_method("draft-model", fast_model, prompt_set, max_new_tokens=NEW, draft_model=draft, k=3)
    assert_lossless(result, reference)


def test_drafter_spec_layer_is_transformers_qwen3_5_full_attention_layer(hf_model):
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5DecoderLayer

    config = copy.deepcopy(hf_model.config)  # the module's fixture keeps its layer pattern
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        theirs = Qwen3_5DecoderLayer(config, 0).eval()
        with torch.no_grad():
            for param in theirs.parameters():
                param.normal_(0, 0.1)
    ours = DecoderLayer(LayerShape.from_base_config(config)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.self_attn.q_proj.weight.shape[0] == 2 * config.num_attention_heads * config.head_dim
    x = torch.randn(1, 6, config.hidden_size)
    positions = torch.arange(6)[None]
    cos_sin = base_rotary(config)(x, positions)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    with torch.no_grad():
        expected = theirs(x, cos_sin, attention_mask=torch.where(mask, 0.0, float("-inf"))[None, None])
        got = ours(x, cos_sin, attn_mask=mask)
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_graphs_and_compiled_layers_stay_lossless_on_the_gpu(prompt_set):
    model = HybridModel.from_hf(hf_tiny(), device="cuda", max_seq_len=256)
    reference = greedy_ar(model, prompt_set, NEW)
    model.compile_layers()
    ar = run_method("ar", model, prompt_set, max_new_tokens=NEW)
    assert_lossless(ar, reference)
    result = run_method("spd", model, prompt_set, max_new_tokens=NEW, stages=4, synthetic_alpha=0.6)
    assert_lossless(result, reference)


@pytest.mark.parametrize("name", ["qwen3.5-4b", "qwen3.5-9b"])
def test_simulator_shapes_are_the_executor_presets(name):
    from spdsim.scenario.presets import get_model

    shape = get_model(name)
    fields = dict(PRESETS[name])
    fields.pop("architectures")
    cfg = HybridConfig.from_hf(AutoConfig.for_model(fields.pop("model_type"), **fields))
    assert (shape.num_layers, shape.hidden_size, shape.intermediate_size) == (
        cfg.num_layers,
        cfg.hidden_size,
        cfg.intermediate_size,
    )
    assert (shape.num_attention_heads, shape.num_kv_heads, shape.head_dim, shape.vocab_size) == (
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    assert shape.tied_embeddings == cfg.tie_word_embeddings
    assert shape.linear_attention_layers == len(cfg.linear_layers) and shape.attention_output_gate
    assert (shape.linear_key_heads, shape.linear_value_heads, shape.linear_head_dim) == (
        cfg.linear_key_heads,
        cfg.linear_value_heads,
        cfg.linear_key_dim,
    )
    from spdsim.contract.model_config import read_model_config

    # one file: the executor's preset is the shipped config the simulator's shape is read from
    config = read_model_config(name)[1]
    assert PRESETS[name]["hidden_size"] == config["hidden_size"]
    assert config["_source"].startswith("text_config of https://huggingface.co/Qwen/Qwen3.5-")


def test_cli_spd_run_on_the_tiny_hybrid_prints_the_lossless_line():
    from typer.testing import CliRunner

    from executor.cli import app

    args = ["run", "--model", "random:tiny-qwen3.5", "--method", "spd", "--stages", "2", "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--limit", "1", "--max-new-tokens", "8", "--spec-layers", "2"])
    assert result.exit_code == 0, result.output
    assert "1/1 prompts identical — lossless" in result.output


def test_eagle3_on_the_hybrid_is_refused_in_one_line_and_the_profile_skips_its_chain_draft(fast_model):
    from executor.profile import ProfileGrid, profile_phases
    from spdsim.contract import SpdsimError

    with pytest.raises(SpdsimError, match="eagle3 on a Qwen3.5 hybrid"):
        run_method("eagle3", fast_model, prompts(count=1, seed=1, vocab=VOCAB), max_new_tokens=4, k=2)
    grid = ProfileGrid(
        stage_counts=(2,), query_tokens=(1,), kv_lens=(16,), spec_layers=(1,), warmup=1, iters=3
    )
    phases = profile_phases(fast_model, grid)
    assert (
        "chain_draft" not in phases
        and phases["drafter"]
        and [e["graphs"] for e in phases["host_issue"]]
        == [
            1,
            2,
            4,
            8,
        ]
    )


def _decode_logits(model: HybridModel, ids: torch.Tensor) -> torch.Tensor:
    """A 30-token prefill (eager: over the compiled limit) and 8 one-token steps (compiled when compiled)."""
    with torch.inference_mode():
        cache = model.new_cache(256)
        model(ids[:, :30], torch.arange(30), cache)
        steps = [model(ids[:, p : p + 1], torch.tensor([p]), cache, kv_len=64) for p in range(30, 38)]
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("gemv", [False, True])
def test_compile_layers_takes_fastmodels_keywords_and_keeps_the_eager_logits_on_the_cpu(hf_model, ids, gemv):
    """bench_executor_ar passes ``gemv=`` to every model's compile_layers (the qwen3.5-9b compiled row failed
    on it, session 8). On the CPU decode_linear is F.linear; a counting backend runs the traced graph as is."""
    from torch._dynamo.testing import CompileCounter

    model = HybridModel.from_hf(hf_model, max_seq_len=256)
    eager = _decode_logits(model, ids)
    counter = CompileCounter()
    model.compile_layers(backend=counter, gemv=gemv)
    compiled = _decode_logits(model, ids)
    model.uncompile_layers()
    assert counter.frame_count > 0
    assert torch.equal(compiled, eager)


def test_gemv_routes_every_layer_matmul_through_decode_linear(hf_model, ids, monkeypatch):
    """What compile_layers(gemv=True) compiles (torch.compile made the identity here): both layer kinds with all
    their weight matmuls through decode_linear."""
    import torch.nn.functional as F

    import executor.gemv

    seen = set()

    def counting_linear(x, weight, bias=None):
        seen.add(tuple(weight.shape))
        return F.linear(x, weight, bias)

    monkeypatch.setattr(executor.gemv, "decode_linear", counting_linear)
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    model = HybridModel.from_hf(hf_model, max_seq_len=256)
    eager = _decode_logits(model, ids)
    assert not seen
    model.compile_layers(gemv=True)
    assert torch.equal(_decode_logits(model, ids), eager)
    names = ("in_proj", "out_proj", "qkv", "o_proj", "gate_up", "down")
    assert seen == {
        tuple(getattr(layer, n).shape) for layer in model.layers for n in names if hasattr(layer, n)
    }


def test_the_compiled_head_compiles_once_for_a_prefill_slice_and_a_step_row(hf_model):
    """SPD's first token comes from the prefill's last position (a slice with a long row stride), AR's later
    tokens from one-row steps: both reach one compiled head (as FastModel's), so no second compile, which on a
    GPU may round the first token differently from the AR reference."""
    from torch._dynamo.testing import CompileCounter

    model = HybridModel.from_hf(hf_model, max_seq_len=256)
    counter = CompileCounter()
    model.compile_layers(backend=counter)
    hidden = torch.randn(1, 30, model.cfg.hidden_size)
    with torch.inference_mode():
        sliced = model.head(hidden[:, -1:])
        fresh = model.head(hidden[:, -1:].clone())
    assert counter.frame_count == 1
    assert torch.equal(sliced, fresh)


def test_spd_on_the_compiled_hybrid_compiles_nothing_in_steady_state(prompt_set, reference):
    """After one SPD run has met every shape (stage steps, draft rows, verify), cycles of another compile nothing:
    a recompile per cycle (a guard on a cache, a ring slot or a position) would cost a compile on a GPU."""
    from torch._dynamo.testing import CompileCounter

    model = HybridModel.from_hf(hf_tiny(), max_seq_len=256)
    counter = CompileCounter()
    model.compile_layers(backend=counter)
    options = {"max_new_tokens": NEW, "stages": 2, "synthetic_alpha": 0.6}
    first = run_method("spd", model, prompt_set, **options)
    frames = counter.frame_count
    second = run_method("spd", model, prompt_set, **options)
    assert frames > 0 and counter.frame_count == frames
    assert_lossless(first, reference)
    assert_lossless(second, reference)
