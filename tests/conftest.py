"""Shared pytest fixtures. Append new fixtures in their own section; keep them session-scoped
when they are expensive."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# --- real language model and corpus (harvest, lm) ------------------------------------------


@pytest.fixture(scope="session")
def wikitext_path() -> Path:
    """WikiText-2 raw test split, kept outside the repository in ../shared/data."""
    path = SHARED_DATA / "wikitext-2-raw-test.txt"
    if not path.is_file():
        pytest.fail(f"test corpus missing: {path} (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer): the embedded SmolLM2-135M-Instruct, loaded once per session."""
    from hf_topafa.data.lm import embedded_gguf_path, load_language_model

    try:
        embedded_gguf_path()
    except ModuleNotFoundError as err:
        pytest.fail(str(err))
    return load_language_model()


# --- threads ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """Small forwards: one thread avoids stalls at thread barriers on a busy shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- tiny random language model (features, steering) ----------------------------------------


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-block random Llama (hidden size 16) with a word-level tokenizer over the words of the
    bundled WikiText sample, saved as a local folder: fast stand-in for a real base model."""
    import collections
    import re

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from hf_topafa.data.harvest import BUNDLED_SAMPLE

    words = re.findall(r"\w+|[^\w\s]", BUNDLED_SAMPLE.read_text(encoding="utf-8").lower())
    common = [w for w, _ in collections.Counter(words).most_common(400)]
    vocab = {"<unk>": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(common)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    folder = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>")
    fast.save_pretrained(folder)
    return folder


# --- a worked top-AFA SAE (test_model, test_afa) ---------------------------------------------


@pytest.fixture
def worked_topafa_sae():
    """d_in 2, d_sae 4, b_dec = (0, 1), unit decoder rows; encoder columns chosen so that
    x - b_dec = (a, b) gives pre = ReLU(b, a, a / 3, b / 8). Numbers worked by hand in
    test_model.test_topafa_k_by_hand and test_afa.test_zf_diagnostics_by_hand."""
    import torch

    from hf_topafa import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=2, d_sae=4, activation="topafa"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[0.0, 1.0, 1 / 3, 0.0], [1.0, 0.0, 0.0, 1 / 8]]))
        sae.W_dec.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.tensor([0.0, 1.0]))
    return sae.eval()
