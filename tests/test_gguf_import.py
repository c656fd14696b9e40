"""Tests of weights_io.gguf_import: GGUF (llama.cpp) Llama -> HF Llama float32 directory.

Every GGUF here is a tiny synthetic one written with ``gguf.GGUFWriter`` under
pytest's tmp_path (2 layers, hidden 32, 4 heads, 2 KV heads, a 25-token
byte-level BPE), its q/k weights permuted the way llama.cpp's converter does
it; no network, no torch, no 98 MB file.

The head dimension is 8, not 4, on purpose: with head_dim 4 each head's rows
form a 2 x 2 block and llama.cpp's permutation is its own inverse, so a
converter that applied the forward permutation instead of the inverse would
pass every test. Skipped when ``gguf`` is missing
(``pip install gguf``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from weights_io import MissingTensorError, ShapeError, WeightsFormatError, load_config  # noqa: E402
from weights_io.gguf_import import gguf_name_to_hf, gguf_to_hf_llama, permute_qk, unpermute_qk  # noqa: E402

N_LAYER, HIDDEN, N_HEAD, N_HEAD_KV, FFN, CONTEXT = 2, 32, 4, 2, 64, 128
HEAD_DIM = HIDDEN // N_HEAD
EPS, THETA = 1e-5, 100000.0

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BASE = ["H", "e", "l", "o", "Ġ", "w", "r", "d", "1", "2", "3", "!"]
MERGES = ["l o", "H e", "He l", "Hel lo", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "2 3"]
TOKENS = SPECIALS + BASE + [m.replace(" ", "") for m in MERGES]
TYPES = [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS))
VOCAB = len(TOKENS)
ID = {t: i for i, t in enumerate(TOKENS)}


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py ``LlamaModel.permute``, as llama.cpp has it (independent of the module)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def hf_weights(tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w = {"model.embed_tokens.weight": r(VOCAB, HIDDEN), "model.norm.weight": r(HIDDEN)}
    if not tied:
        w["lm_head.weight"] = r(VOCAB, HIDDEN)
    for n in range(N_LAYER):
        p = f"model.layers.{n}."
        w.update({
            p + "input_layernorm.weight": r(HIDDEN),
            p + "post_attention_layernorm.weight": r(HIDDEN),
            p + "self_attn.q_proj.weight": r(N_HEAD * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": r(N_HEAD_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": r(N_HEAD_KV * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": r(HIDDEN, N_HEAD * HEAD_DIM),
            p + "mlp.gate_proj.weight": r(FFN, HIDDEN),
            p + "mlp.up_proj.weight": r(FFN, HIDDEN),
            p + "mlp.down_proj.weight": r(HIDDEN, FFN),
        })
    return w


# How each tensor is stored in the synthetic GGUF: layer 0's q/k in F32 (so
# that they must come back bit for bit), layer 1's quantized like the real file.
def storage_type(gguf_name: str):
    Q = gguf.GGMLQuantizationType
    return {"token_embd.weight": Q.F16, "blk.0.ffn_down.weight": Q.Q8_0, "blk.1.ffn_down.weight": Q.Q4_1,
            "blk.1.attn_q.weight": Q.Q4_1, "blk.1.attn_k.weight": Q.Q8_0}.get(gguf_name, Q.F32)


def expected_float32(gguf_name: str, w: np.ndarray) -> np.ndarray:
    """What a correct converter must return for HF weight ``w`` stored as ``storage_type``.

    Block quantization works along rows and the q/k permutation moves whole
    rows, so for q/k too this is the (de)quantized unpermuted weight.
    """
    Q = gguf.GGMLQuantizationType
    qtype = storage_type(gguf_name)
    if qtype == Q.F32:
        return w
    if qtype == Q.F16:
        return w.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)


HF_TO_GGUF_TEMPLATE = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name_of(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, n, *rest = hf.split(".")
    return f"blk.{n}.{HF_TO_GGUF_TEMPLATE['.'.join(rest[:-1])]}.weight"


def write_gguf(path, hf: dict[str, np.ndarray], *, arch: str = "llama", pre: str = "smollm",
               drop: str | None = None, replace: dict | None = None, extra_tensor: str | None = None) -> None:
    """Write ``hf`` (HF names and layout) as llama.cpp's converter would: renamed, q/k permuted."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(N_LAYER)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(THETA)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_layer_norm_rms_eps(EPS)
    w.add_vocab_size(VOCAB)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(TOKENS)
    w.add_token_types(TYPES)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    for name, array in hf.items():
        g = gguf_name_of(name)
        if g == drop:
            continue
        if name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, N_HEAD, N_HEAD)
        elif name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, N_HEAD, N_HEAD_KV)
        if replace and g in replace:
            array = replace[g]
        qtype = storage_type(g)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(g, np.ascontiguousarray(array, dtype=np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(g, array.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    if extra_tensor:
        w.add_tensor(extra_tensor, np.zeros(HIDDEN, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{tied: (hf weights, output dir)} for a tied and an untied synthetic model."""
    out = {}
    for tied in (True, False):
        d = tmp_path_factory.mktemp(f"tied{int(tied)}")
        hf = hf_weights(tied, seed=int(tied))
        write_gguf(d / "model.gguf", hf)
        out[tied] = (hf, gguf_to_hf_llama(d / "model.gguf", d / "hf"))
    return out


# --------------------------------------------------------------------------
# The permutation


@pytest.mark.parametrize("rows,n_head,rest", [(8, 1, ()), (16, 4, (16,)), (12, 3, (5,)), (192, 3, (576,)),
                                               (576, 9, (7,)), (64, 2, (3, 2))])
def test_unpermute_inverts_llama_cpp_permute_bit_exactly(rows, n_head, rest):
    rng = np.random.default_rng(rows + n_head)
    # Random bit patterns: NaN payloads, -0.0, subnormals must all survive.
    w = rng.integers(0, 2**32, size=(rows, *rest), dtype=np.uint32).view(np.float32)
    permuted = llama_cpp_permute(w, n_head, None)
    assert not np.array_equal(permuted.view(np.uint32), w.view(np.uint32)) or rows // n_head == 2
    if rows // n_head > 4:  # (with 2 rows per half-head the permutation is its own inverse)
        assert not np.array_equal(permute_qk(permuted, n_head).view(np.uint32), w.view(np.uint32))
    assert np.array_equal(unpermute_qk(permuted, n_head).view(np.uint32), w.view(np.uint32))
    assert np.array_equal(permute_qk(w, n_head).view(np.uint32), permuted.view(np.uint32))
    assert np.array_equal(permute_qk(unpermute_qk(w, n_head), n_head).view(np.uint32), w.view(np.uint32))


def test_permute_row_mapping_is_halves_to_pairs():
    """Within each head, HF rows j and j + head_dim/2 (the rotate_half pair) become GGUF rows 2j, 2j+1."""
    n_head, head_dim = 3, 8
    hf_rows = np.arange(n_head * head_dim)
    gguf_rows = permute_qk(hf_rows, n_head)
    for h in range(n_head):
        for j in range(head_dim // 2):
            assert gguf_rows[h * head_dim + 2 * j] == h * head_dim + j
            assert gguf_rows[h * head_dim + 2 * j + 1] == h * head_dim + head_dim // 2 + j


def test_permute_rejects_bad_head_counts():
    with pytest.raises(ShapeError):
        unpermute_qk(np.zeros((10, 4), np.float32), 3)
    with pytest.raises(ShapeError):
        permute_qk(np.zeros((8, 4), np.float32), 0)


def test_name_mapping():
    assert gguf_name_to_hf("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_name_to_hf("output.weight") == "lm_head.weight"
    assert gguf_name_to_hf("output_norm.weight") == "model.norm.weight"
    assert gguf_name_to_hf("blk.17.attn_output.weight") == "model.layers.17.self_attn.o_proj.weight"
    assert gguf_name_to_hf("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert gguf_name_to_hf("blk.0.attn_q.bias") is None
    assert gguf_name_to_hf("rope_freqs.weight") is None


# --------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("tied", [True, False])
def test_tensors_names_shapes_and_values(converted, tied):
    hf, out = converted[tied]
    got = safetensors_numpy.load_file(str(out / "model.safetensors"))
    assert set(got) == set(hf)
    assert ("lm_head.weight" in got) == (not tied)
    for name, w in hf.items():
        assert got[name].dtype == np.float32 and got[name].shape == w.shape, name
        want = expected_float32(gguf_name_of(name), w)
        assert np.array_equal(got[name], want), name
    # F32 q/k came back unpermuted, bit for bit; quantized ones near the originals.
    for proj in ("q_proj", "k_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        assert np.array_equal(got[name].view(np.uint32), hf[name].view(np.uint32))
    for name, tol in (("model.layers.0.mlp.down_proj.weight", 0.05), ("model.layers.1.self_attn.k_proj.weight", 0.05),
                      ("model.layers.1.self_attn.q_proj.weight", 0.5)):
        assert 0 < np.abs(got[name] - hf[name]).max() < tol, name


@pytest.mark.parametrize("tied", [True, False])
def test_config(converted, tied):
    _, out = converted[tied]
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "llama" and raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["hidden_act"] == "silu" and raw["torch_dtype"] == "float32"
    assert (raw["hidden_size"], raw["intermediate_size"], raw["num_hidden_layers"]) == (HIDDEN, FFN, N_LAYER)
    assert (raw["num_attention_heads"], raw["num_key_value_heads"]) == (N_HEAD, N_HEAD_KV)
    assert raw["rms_norm_eps"] == EPS and raw["rope_theta"] == THETA  # 1e-05 exactly, not 9.99999974e-06
    assert raw["max_position_embeddings"] == CONTEXT and raw["vocab_size"] == VOCAB
    assert raw["tie_word_embeddings"] is tied
    assert (raw["bos_token_id"], raw["eos_token_id"], raw["pad_token_id"]) == (1, 2, 2)
    cfg = load_config(out)  # the project's own parser accepts it
    assert (cfg.num_key_value_heads, cfg.head_dim, cfg.tie_word_embeddings) == (N_HEAD_KV, HEAD_DIM, tied)


def test_tokenizer(converted):
    tokenizers = pytest.importorskip("tokenizers")
    _, out = converted[True]
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB
    enc = tok.encode("Hello world")
    assert enc.ids == [ID["Hello"], ID["Ġworld"]]
    assert tok.decode(enc.ids) == "Hello world"
    # smollm isolates every digit before BPE: "23" is never merged.
    assert tok.encode("123!").ids == [ID["1"], ID["2"], ID["3"], ID["!"]]
    # control tokens are special added tokens, matched whole and skipped on decode
    enc = tok.encode("<|im_start|>Hello<|im_end|>")
    assert enc.ids == [ID["<|im_start|>"], ID["Hello"], ID["<|im_end|>"]]
    assert tok.decode(enc.ids) == "Hello"
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert config["add_bos_token"] is False


def test_gpt2_pre_tokenizer_merges_digits(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    write_gguf(tmp_path / "m.gguf", hf_weights(True), pre="gpt-2")
    out = gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")
    tok = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("123!").ids == [ID["1"], ID["23"], ID["!"]]


def test_unsupported_pre_tokenizer_and_tokenizer_false(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True), pre="llama-bpe")
    with pytest.raises(WeightsFormatError, match="llama-bpe"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    out = gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf", tokenizer=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


# --------------------------------------------------------------------------
# Output directory


def test_refuses_non_empty_dir_unless_overwrite(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True))
    (tmp_path / "hf").mkdir()
    out = gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")  # empty: fine
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")
    (out / "stale.txt").write_text("x")
    write_gguf(tmp_path / "m2.gguf", hf_weights(True, seed=5))
    gguf_to_hf_llama(tmp_path / "m2.gguf", tmp_path / "hf", overwrite=True)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m.gguf", "m2.gguf"]  # no temp dirs left


def test_failed_conversion_leaves_nothing(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True), drop="blk.1.ffn_up.weight")
    with pytest.raises(MissingTensorError):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


# --------------------------------------------------------------------------
# Bad input


def test_garbage_and_empty_files(tmp_path):
    for name, data in (("garbage.gguf", b"this is not a gguf file at all" * 10), ("empty.gguf", b""),
                       ("truncated.gguf", b"GGUF\x03\x00\x00\x00\x05")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsFormatError, match=name):
            gguf_to_hf_llama(tmp_path / name, tmp_path / "hf")
    with pytest.raises(FileNotFoundError):
        gguf_to_hf_llama(tmp_path / "missing.gguf", tmp_path / "hf")


def test_truncated_real_header(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True))
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsFormatError, match="cut.gguf"):
        gguf_to_hf_llama(tmp_path / "cut.gguf", tmp_path / "hf")


def test_wrong_architecture(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True), arch="gpt2")
    with pytest.raises(WeightsFormatError, match=r"'gpt2'.*expected 'llama'"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")


def test_missing_tensor_is_named(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True), drop="blk.1.ffn_up.weight")
    with pytest.raises(MissingTensorError, match=r"blk\.1\.ffn_up\.weight"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")


def test_unexpected_shape(tmp_path):
    bad = np.zeros((N_HEAD * HEAD_DIM, HIDDEN // 2), np.float32)
    write_gguf(tmp_path / "m.gguf", hf_weights(True), replace={"blk.0.attn_q.weight": bad})
    with pytest.raises(WeightsFormatError, match=r"blk\.0\.attn_q\.weight.*expected \[32, 32\]"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")


def test_unknown_tensor(tmp_path):
    write_gguf(tmp_path / "m.gguf", hf_weights(True), extra_tensor="blk.0.attn_q.bias")
    with pytest.raises(WeightsFormatError, match=r"unexpected tensor 'blk\.0\.attn_q\.bias'"):
        gguf_to_hf_llama(tmp_path / "m.gguf", tmp_path / "hf")
