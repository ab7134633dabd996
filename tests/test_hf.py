"""Hugging Face directories: ``nqtool convert DIR`` and ``nqformat.torch.load`` on tiny random
transformers models (the real MiniLM check is tests/test_hf_minilm.py, slow)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import nqformat
import nqformat.torch as nqt
from nqformat.cli import main
from nqformat.container.spec import Kind
from nqformat.hf import assets, lnfit
from nqformat.hf.checkpoint import CheckpointError, open_checkpoint
from nqformat.quant import nest_quantize, refit_part_params

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 97


def _bert(directory: pathlib.Path) -> pathlib.Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        architectures=["BertModel"],
    )
    model = BertModel(cfg).eval()
    with torch.no_grad():  # trained-looking norms, so the LayerNorm fit has something to read
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    return directory


def _llama(directory: pathlib.Path, *, shard: str | None = None) -> pathlib.Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        architectures=["LlamaForCausalLM"],
    )
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, **kwargs)
    return directory


def _convert(src: pathlib.Path, out: pathlib.Path, *extra: str) -> str:
    args = ["convert", str(src), "--n", "8", "--h", "6", "-o", str(out), *extra]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def _tokens() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"input_ids": torch.randint(0, VOCAB, (3, 11), generator=g)}


def _reference(src: pathlib.Path) -> torch.nn.Module:
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = json.loads((src / "config.json").read_text())
    cls = AutoModelForCausalLM if "CausalLM" in cfg["architectures"][0] else AutoModel
    return cls.from_pretrained(str(src), local_files_only=True).eval()


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        out = model(**_tokens())
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def test_bert_directory_nests_linears_and_the_vocab_table_and_keeps_the_rest_raw(
    tmp_path: pathlib.Path,
) -> None:
    src = _bert(tmp_path / "bert")
    out = tmp_path / "b.nq"
    stdout = _convert(src, out)
    assert f"wrote {out}" in stdout
    with nqformat.open(out) as f:
        kinds = {t.name: t.kind for t in f.tensors()}
        meta = f.metadata
    assert kinds["embeddings.word_embeddings.weight"] is Kind.NESTED
    assert kinds["encoder.layer.0.attention.self.query.weight"] is Kind.NESTED
    assert kinds["pooler.dense.weight"] is Kind.NESTED
    for raw in (
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.0.attention.self.query.bias",
    ):
        assert kinds[raw] is Kind.RAW, raw
    linears = sum(isinstance(m, torch.nn.Linear) for m in _reference(src).modules())
    assert sum(k is Kind.NESTED for k in kinds.values()) == linears + 1
    assert meta["model"]["source"] == "transformers"
    assert meta["model"]["class"] == "BertModel"
    assert meta["model"]["config"] == json.loads((src / "config.json").read_text())


@pytest.mark.parametrize("mode", ["full", "part"])
def test_loaded_bert_is_the_transformers_model_and_close_to_fp32(
    tmp_path: pathlib.Path, mode: str
) -> None:
    from transformers import BertModel

    src = _bert(tmp_path / "bert")
    out = tmp_path / "b.nq"
    _convert(src, out)
    ref = _output(_reference(src))
    model = nqt.load(out, mode)
    assert isinstance(model, BertModel)
    assert not model.training
    got = _output(model)
    cos = torch.nn.functional.cosine_similarity(got.flatten(1), ref.flatten(1)).min()
    assert cos > (0.999 if mode == "full" else 0.99)
    # the weights are exactly the file's dequantized values
    with nqformat.open(out) as f:
        w = f.read("encoder.layer.1.intermediate.dense.weight", mode)
    assert np.array_equal(model.encoder.layer[1].intermediate.dense.weight.detach().numpy(), w)


def test_tied_lm_head_is_stored_once_and_comes_back_tied(tmp_path: pathlib.Path) -> None:
    src = _llama(tmp_path / "llama", shard="60KB")
    assert (src / "model.safetensors.index.json").is_file()  # sharded
    assert len(open_checkpoint(src).shards) > 1
    out = tmp_path / "l.nq"
    _convert(src, out)
    with nqformat.open(out) as f:
        names = f.names()
        assert f.metadata["model"]["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
        assert f.info("model.embed_tokens.weight").kind is Kind.NESTED
    assert "lm_head.weight" not in names
    model = nqt.load(out, "part", resident="float")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    nqt.switch(model, "full")  # switching rewrites the one table both names share
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # codes-resident: both names read the one record, so they follow one mode
    codes = nqt.load(out, "part", resident="codes")
    assert torch.equal(codes.lm_head.weight, codes.model.embed_tokens.weight)
    nqt.switch(codes, "full")
    assert torch.equal(codes.lm_head.weight, model.lm_head.weight)
    assert torch.equal(codes.model.embed_tokens.weight, model.lm_head.weight)
    with nqformat.open(out) as f:
        full = f.read("model.embed_tokens.weight", "full")
    assert np.array_equal(model.lm_head.weight.detach().numpy(), full)
    ref = _output(_reference(src))
    cos = torch.nn.functional.cosine_similarity(_output(model).flatten(1), ref.flatten(1))
    assert cos.min() > 0.999


def test_keep_embeddings_float_stores_the_table_and_its_tied_head_raw(
    tmp_path: pathlib.Path,
) -> None:
    src = _llama(tmp_path / "llama")
    out = tmp_path / "l.nq"
    _convert(src, out, "--keep-embeddings-float")
    with nqformat.open(out) as f:
        assert f.info("model.embed_tokens.weight").kind is Kind.RAW
        assert f.info("model.layers.0.mlp.up_proj.weight").kind is Kind.NESTED
        assert "lm_head.weight" not in f
        assert f.metadata["quant"]["embeddings"] == "float"
    model = nqt.load(out, "part")
    table = model.model.embed_tokens.weight
    ref = _reference(src).model.embed_tokens.weight
    assert torch.equal(table, ref)


def test_bin_shards_convert_like_safetensors(tmp_path: pathlib.Path) -> None:
    src = _bert(tmp_path / "bert")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((src / "config.json").read_text())
    from safetensors.torch import load_file

    torch.save(load_file(str(src / "model.safetensors")), bin_dir / "pytorch_model.bin")
    _convert(src, tmp_path / "a.nq")
    _convert(bin_dir, tmp_path / "b.nq")
    with nqformat.open(tmp_path / "a.nq") as a, nqformat.open(tmp_path / "b.nq") as b:
        assert a.names() == b.names()
        for name in a.names():
            assert np.array_equal(a.read(name, "full"), b.read(name, "full")), name


def test_workers_do_not_change_the_bytes(tmp_path: pathlib.Path) -> None:
    src = _llama(tmp_path / "llama", shard="60KB")
    _convert(src, tmp_path / "w1.nq", "--workers", "1")
    _convert(src, tmp_path / "w3.nq", "--workers", "3")
    assert (tmp_path / "w1.nq").read_bytes() == (tmp_path / "w3.nq").read_bytes()


def test_directory_without_weights_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    src = _bert(tmp_path / "bert")
    (src / "model.safetensors").unlink()
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "x.nq")])
    assert result.exit_code != 0
    assert "no model.safetensors" in result.output
    assert not (tmp_path / "x.nq").exists()
    with pytest.raises(CheckpointError):
        open_checkpoint(src)


def test_checkpoint_missing_a_tensor_is_named_and_leaves_no_file(tmp_path: pathlib.Path) -> None:
    from safetensors.torch import load_file, save_file

    src = _bert(tmp_path / "bert")
    sd = load_file(str(src / "model.safetensors"))
    del sd["encoder.layer.1.output.dense.weight"]
    save_file(sd, str(src / "model.safetensors"))
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "x.nq")])
    assert result.exit_code != 0
    assert "encoder.layer.1.output.dense.weight" in result.output
    assert not (tmp_path / "x.nq").exists()


def test_zoo_only_options_are_refused_for_a_directory(tmp_path: pathlib.Path) -> None:
    src = _bert(tmp_path / "bert")
    result = CliRunner().invoke(main, ["convert", str(src), "--random-init"])
    assert result.exit_code == 2
    assert "--random-init" in result.output


def test_tokenizer_files_travel_in_meta_and_load_back(tmp_path: pathlib.Path) -> None:
    from transformers import AutoTokenizer

    src = _bert(tmp_path / "bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]
    (src / "vocab.txt").write_text("\n".join(words) + "\n")
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(src))
    out = tmp_path / "b.nq"
    _convert(src, out)
    with nqformat.open(out) as f:
        stored = f.metadata["model"]["assets"]
    assert stored["stored"] is True
    assert "vocab.txt" in stored["files"]
    tok = nqformat.hf.load_tokenizer(out)
    assert tok("hello world")["input_ids"] == [2, 5, 6, 3]


def test_assets_over_budget_say_what_to_supply(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tokenizer.json").write_text("x" * 1000)
    (tmp_path / "vocab.txt").write_text("a\nb\n")
    got = assets.collect(tmp_path, budget=500)
    assert got["stored"] is False
    assert got["supply"] == ["tokenizer.json", "vocab.txt"]
    assert "16 MiB" in got["reason"]
    with pytest.raises(nqformat.errors.NQError, match="does not carry its tokenizer"):
        assets.write_assets({"assets": got, "config": {}}, tmp_path / "out")


def test_asset_names_cannot_leave_the_target_directory(tmp_path: pathlib.Path) -> None:
    meta = {"assets": {"stored": True, "files": {"../evil": {"text": "x"}}}, "config": {}}
    with pytest.raises(nqformat.errors.NQError, match="leaves the target"):
        assets.write_assets(meta, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


# --- LayerNorm-informed part-bit fit ------------------------------------------------------------


def test_norm_inputs_follow_bert_post_ln_and_llama_pre_norm_wiring() -> None:
    bert_keys = [
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.0.output.LayerNorm.weight",
        "encoder.layer.0.output.LayerNorm.bias",
        "encoder.layer.1.attention.output.LayerNorm.weight",
    ]
    got = lnfit.norm_inputs(
        "bert",
        [
            "encoder.layer.0.attention.self.query",
            "encoder.layer.1.attention.self.value",
            "encoder.layer.1.intermediate.dense",
            "encoder.layer.1.output.dense",
        ],
        bert_keys,
    )
    assert got == {
        "encoder.layer.0.attention.self.query": lnfit.NormInput("embeddings.LayerNorm", True),
        "encoder.layer.1.attention.self.value": lnfit.NormInput(
            "encoder.layer.0.output.LayerNorm", True
        ),
        "encoder.layer.1.intermediate.dense": lnfit.NormInput(
            "encoder.layer.1.attention.output.LayerNorm", False
        ),
    }
    llama = lnfit.norm_inputs(
        "llama",
        [
            "model.layers.3.self_attn.k_proj",
            "model.layers.3.mlp.up_proj",
            "model.layers.3.mlp.down_proj",
        ],
        ["model.layers.3.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight"],
    )
    assert llama == {
        "model.layers.3.self_attn.k_proj": lnfit.NormInput("model.layers.3.input_layernorm", False),
        "model.layers.3.mlp.up_proj": lnfit.NormInput(
            "model.layers.3.post_attention_layernorm", False
        ),
    }
    assert lnfit.norm_inputs("gpt2", ["h.0.attn.c_attn"], ["h.0.ln_1.weight"]) == {}


def _expected_output_error(w, high, scale, offset, gamma, beta) -> float:
    r = w.astype(np.float64) - (scale[:, None] * high + offset[:, None])
    return float(np.sum((gamma**2) * r * r) + np.sum((r @ beta) ** 2))


def test_ln_fit_lowers_the_expected_output_error_below_least_squares() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, (48, 64)).astype(np.float32)
    gamma = rng.uniform(0.1, 3.0, 64)
    beta = rng.normal(0, 1.0, 64)
    res = nest_quantize(w, 8, 4)
    ln_s, ln_o = lnfit.fit_part_params(w, res.w_high, res.scale, res.zero_point, res.l, gamma, beta)
    ls = _expected_output_error(w, res.w_high, res.scale_part, res.offset_part, gamma, beta)
    ln = _expected_output_error(w, res.w_high, ln_s, ln_o, gamma, beta)
    assert ln < 0.9 * ls


def test_ln_fit_with_unit_gamma_and_zero_beta_is_plain_least_squares() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.05, (8, 32)).astype(np.float32)
    res = nest_quantize(w, 8, 5)
    s, o = lnfit.fit_part_params(
        w, res.w_high, res.scale, res.zero_point, res.l, np.ones(32), np.zeros(32)
    )
    ls_s, ls_o = refit_part_params(w, res.w_high, res.scale_part)
    np.testing.assert_allclose(s, ls_s, rtol=1e-5)
    np.testing.assert_allclose(o, ls_o, rtol=1e-4, atol=1e-7)


def test_ln_fit_changes_only_the_part_bit_parameters_of_norm_fed_linears(
    tmp_path: pathlib.Path,
) -> None:
    src = _bert(tmp_path / "bert")
    _convert(src, tmp_path / "ls.nq")
    _convert(src, tmp_path / "ln.nq", "--ln-fit")
    with nqformat.open(tmp_path / "ls.nq") as a, nqformat.open(tmp_path / "ln.nq") as b:
        fitted = b.metadata["quant"]["ln_fit"]
        assert "encoder.layer.0.attention.self.query.weight" in fitted
        assert "encoder.layer.1.intermediate.dense.weight" in fitted
        assert "encoder.layer.0.output.dense.weight" not in fitted
        for name in a.names():
            same_full = np.array_equal(a.read(name, "full"), b.read(name, "full"))
            same_part = np.array_equal(a.read(name, "part"), b.read(name, "part"))
            assert same_full, name
            assert same_part == (name not in fitted), name


def test_reader_side_and_inspect_do_not_import_transformers(tmp_path: pathlib.Path) -> None:
    src = _bert(tmp_path / "bert")
    out = tmp_path / "b.nq"
    _convert(src, out)
    code = (
        "import sys\n"
        "from nqformat.cli import main\n"
        "try:\n"
        "    main(['inspect', sys.argv[1]])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'transformers' not in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert "transformers" in proc.stdout  # inspect names the source


@pytest.mark.parametrize("maker", [_bert, _llama])
def test_codes_runtime_matches_the_float_runtime_tied_head_included(
    tmp_path: pathlib.Path, maker
) -> None:
    src = maker(tmp_path / "src")
    out = tmp_path / "m.nq"
    _convert(src, out)
    float_model = nqt.load(out, "part")
    codes_model = nqt.load(out, "part", resident="codes")
    assert torch.equal(_output(codes_model), _output(float_model))
    nqt.switch(float_model, "full")
    nqt.switch(codes_model, "full")  # the tied head follows its embedding table
    assert torch.equal(_output(codes_model), _output(float_model))
    nqt.close(codes_model)  # float32 weights again, and a tied head tied again
    if maker is _llama:
        assert codes_model.lm_head.weight is codes_model.model.embed_tokens.weight
    assert torch.equal(_output(codes_model), _output(float_model))
