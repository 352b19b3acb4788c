"""Activation harvesting on the real SmolLM2 model and the real WikiText-2 corpus."""

from __future__ import annotations

import itertools
import json
import re

import pytest
import torch

from hf_topafa.data import harvest as H
from hf_topafa.data import lm

CTX = 32  # short windows keep the real-model forwards cheap


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base_cfg(wikitext_path):
    return dict(dataset=str(wikitext_path), context_length=CTX, batch_windows=4, layer=4)


@pytest.fixture(scope="module")
def docs_jsonl(tmp_path_factory, wikitext_path):
    """Separate documents (one paragraph each), so EOS separators appear between them."""
    lines = [ln for ln in wikitext_path.read_text(encoding="utf-8").splitlines() if len(ln) > 80]
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines[:16]):
            f.write(json.dumps({"id": i, "content": line.strip()}) + "\n")
    return path


# --- configuration and text ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hook_point": "resid_mid"}, "resid_pre, resid_post, mlp_out, attn_out"),
        ({"layer": -1}, "layer"),
        ({"context_length": 0}, "context_length"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"rank": 2, "world_size": 2}, r"0\.\.1"),
        ({"holdout": "test"}, "none, train, eval"),
        ({"dtype": "int8"}, "float32, bfloat16, float16"),
        ({"shuffle_buffer": -1}, "shuffle_buffer"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        H.HarvestConfig(**kwargs)


def test_config_accepts_torch_dtype():
    assert H.HarvestConfig(dtype=torch.bfloat16).dtype == "bfloat16"


def test_layer_out_of_range_lists_valid_layers(smollm2, base_cfg):
    with pytest.raises(ValueError, match=r"valid layers are 0\.\.29"):
        H.Harvester(H.HarvestConfig(**{**base_cfg, "layer": 30}))


def test_txt_records_skip_blank_lines(wikitext_path):
    texts = list(H.load_text_dataset(wikitext_path))
    assert texts[0] == " = Robert Boulter = \n"
    assert all(t.strip() for t in texts)
    raw_lines = wikitext_path.read_text(encoding="utf-8").splitlines()
    assert len(texts) == sum(1 for ln in raw_lines if ln.strip())


def test_bundled_sample_is_a_prefix_of_the_corpus(wikitext_path):
    sample = H.BUNDLED_SAMPLE.read_bytes()
    assert 100_000 < len(sample) < 400_000
    assert wikitext_path.read_bytes().startswith(sample)
    readme = (H.DATA_DIR / "wikitext-2-raw-test-sample.README.md").read_text()
    assert "CC BY-SA 3.0" in readme and "Merity" in readme
    assert next(iter(H.load_text_dataset(None))) == " = Robert Boulter = \n"


def test_missing_file_and_bad_format(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        H.load_text_dataset(missing)
    bad = tmp_path / "data.xml"
    bad.write_text("<a/>")
    with pytest.raises(ValueError, match=r"\.txt, \.jsonl"):
        H.load_text_dataset(bad)


def test_missing_column_lists_columns(docs_jsonl):
    with pytest.raises(ValueError, match="columns found: id, content"):
        H.load_text_dataset(docs_jsonl, text_column="text")
    texts = list(H.load_text_dataset(docs_jsonl, text_column="content"))
    assert len(texts) == 16
    streamed = list(H.load_text_dataset(docs_jsonl, text_column="content", streaming=True))
    assert streamed == texts


def test_parquet_and_sharding(tmp_path, docs_jsonl):
    import datasets

    texts = list(H.load_text_dataset(docs_jsonl, text_column="content"))
    path = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(path))
    assert list(H.load_text_dataset(path)) == texts
    parts = [list(H.load_text_dataset(path, rank=r, world_size=3)) for r in range(3)]
    assert all(parts) and sum(parts, []) == texts  # disjoint, together everything


def test_folders_of_txt_and_jsonl(tmp_path, wikitext_path, docs_jsonl):
    lines = wikitext_path.read_text(encoding="utf-8").splitlines(keepends=True)[:60]
    txt_dir = tmp_path / "txt"
    txt_dir.mkdir()
    (txt_dir / "a.txt").write_text("".join(lines[:30]), encoding="utf-8")
    (txt_dir / "b.txt").write_text("".join(lines[30:]), encoding="utf-8")
    expected = [ln.replace("\r\n", "\n") for ln in lines if ln.strip()]
    assert list(H.load_text_dataset(txt_dir)) == expected
    json_dir = tmp_path / "json"
    json_dir.mkdir()
    (json_dir / "docs.jsonl").write_bytes(docs_jsonl.read_bytes())
    assert len(list(H.load_text_dataset(json_dir, text_column="content"))) == 16


def test_iter_windows_packs_the_token_stream(smollm2, wikitext_path):
    _, tok = smollm2
    texts = list(H.load_text_dataset(wikitext_path))[:200]
    windows = list(H.iter_windows(tok, texts, 50))
    stream = [i for t in texts for i in tok(t)["input_ids"]]
    assert len(windows) == len(stream) // 50
    assert all(w.shape == (50,) and w.dtype == torch.long for w in windows)
    assert torch.cat(windows).tolist() == stream[: len(windows) * 50]
    with_sep = list(H.iter_windows(tok, texts[:3], 4, separator_id=tok.eos_token_id))
    flat = torch.cat(with_sep).tolist()
    first_len = len(tok(texts[0])["input_ids"])
    assert flat[first_len] == tok.eos_token_id


# --- harvesting ---------------------------------------------------------------------------


def test_harvest_matches_truncated_forward(smollm2, base_cfg):
    model, _ = smollm2
    harvester = H.Harvester(H.HarvestConfig(**base_cfg, max_tokens=150))
    chunks = list(harvester.iter_with_tokens(progress=False))
    acts = torch.cat([c.acts for c in chunks])
    positions = torch.cat([c.positions for c in chunks])
    windows = torch.cat([c.window_ids for c in chunks])
    assert acts.shape == (150, 576) and acts.dtype == torch.float32 and acts.device.type == "cpu"
    assert (positions > 0).all() and positions.max() < CTX
    ref_windows = torch.stack(list(itertools.islice(harvester.windows(), int(windows.max()) + 1)))
    with torch.no_grad():
        hidden = model(ref_windows, output_hidden_states=True).hidden_states[5]  # resid_post of 4
    torch.testing.assert_close(acts, hidden[windows, positions])
    token_ids = torch.cat([c.token_ids for c in chunks])
    assert torch.equal(token_ids, ref_windows[windows, positions])
    assert len(windows) == 150  # max_tokens respected exactly, first position of each dropped
    assert sorted(set(positions.tolist())) == list(range(1, CTX))


def test_first_position_included_when_asked(smollm2, base_cfg):
    cfg = H.HarvestConfig(**base_cfg, exclude_first=False, max_tokens=4 * CTX)
    chunk = next(H.Harvester(cfg).iter_with_tokens(progress=False))
    first = chunk.acts[chunk.positions == 0].norm(dim=-1)
    rest = chunk.acts[chunk.positions > 0].norm(dim=-1)
    assert len(first) == 4
    assert first.min() > 5 * rest.median()  # why it is excluded by default


def test_special_tokens_excluded(smollm2, docs_jsonl):
    _, tok = smollm2
    cfg = dict(dataset=str(docs_jsonl), text_column="content", context_length=64, layer=2)
    kept = torch.cat([c.token_ids for c in H.Harvester(H.HarvestConfig(**cfg)).iter_with_tokens()])
    assert not torch.isin(kept, torch.tensor([tok.eos_token_id, tok.bos_token_id])).any()
    all_ids = torch.cat(
        [
            c.token_ids
            for c in H.Harvester(H.HarvestConfig(**cfg, exclude_bos=False)).iter_with_tokens()
        ]
    )
    assert (all_ids == tok.eos_token_id).sum() >= 5  # separators exist and are kept on request
    assert len(all_ids) == len(kept) + int((all_ids == tok.eos_token_id).sum())


def test_iter_batches_shuffles_kept_tokens(smollm2, base_cfg):
    cfg = H.HarvestConfig(**base_cfg, max_tokens=300, shuffle_buffer=128, seed=1)
    harvester = H.Harvester(cfg)
    batches = list(harvester.iter_batches(64, progress=False))
    assert [len(b) for b in batches] == [64] * 4 + [44]
    shuffled = torch.cat(batches)
    ordered = torch.cat([c.acts for c in harvester.iter_with_tokens(progress=False)])
    assert not torch.equal(shuffled, ordered)
    key = lambda x: x[:, 0].argsort()  # noqa: E731
    torch.testing.assert_close(shuffled[key(shuffled)], ordered[key(ordered)], rtol=0, atol=0)
    assert [len(b) for b in harvester.iter_batches(64, progress=False, drop_last=True)] == [64] * 4


def test_holdout_and_ranks_split_windows(smollm2, base_cfg):
    def windows(n, **kw):
        cfg = H.HarvestConfig(**{**base_cfg, **kw})
        return [tuple(w.tolist()) for w in itertools.islice(H.Harvester(cfg).windows(), n)]

    everything = windows(500)
    train = windows(400, holdout="train", holdout_every=5)
    evals = windows(100, holdout="eval", holdout_every=5)
    assert evals == everything[::5]
    assert sorted(train + evals) == sorted(everything)
    rank0, rank1 = windows(200, rank=0, world_size=2), windows(200, rank=1, world_size=2)
    assert len(rank0) == len(rank1) == 200 and not set(rank0) & set(rank1)
    assert set(rank0) <= set(windows(10**6))  # rank 0 reads the first half of the corpus


# --- on-disk cache ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(smollm2, base_cfg, tmp_path_factory):
    cfg = H.HarvestConfig(**base_cfg, max_tokens=200)
    out = tmp_path_factory.mktemp("caches") / "layer4"
    assert H.write_cache(cfg, out, shard_tokens=64, progress=False) == out
    return out


def test_cache_round_trip(smollm2, base_cfg, cache_dir):
    cfg = H.HarvestConfig(**base_cfg, max_tokens=200)
    cache = H.ActivationCache(cache_dir, expect=cfg)
    m = cache.manifest
    assert (m["model"], m["layer"], m["hook_point"]) == (lm.DEFAULT_MODEL, 4, "resid_post")
    assert m["dataset"] == H.dataset_name(base_cfg["dataset"]) and m["num_tokens"] == 200
    assert cache.num_tokens == 200 and cache.d_in == 576
    assert [s["num_tokens"] for s in m["shards"]] == [64, 64, 64, 8]
    assert sorted(p.name for p in cache_dir.iterdir()) == ["manifest.json"] + [
        f"shard-{i:05d}.safetensors" for i in range(4)
    ]
    fresh = torch.cat([c.acts for c in H.Harvester(cfg).iter_with_tokens(progress=False)])
    ordered = torch.cat(list(cache.iter_batches(50, shuffle=False)))
    torch.testing.assert_close(ordered, fresh, rtol=0, atol=0)
    stored = list(cache.iter_with_tokens())
    assert torch.equal(torch.cat([s.acts for s in stored]), fresh)
    assert (torch.cat([s.positions for s in stored]) > 0).all()
    shuffled = torch.cat(list(cache.iter_batches(50, shuffle=True, seed=3)))
    assert not torch.equal(shuffled, fresh)
    assert torch.equal(shuffled[shuffled[:, 0].argsort()], fresh[fresh[:, 0].argsort()])
    for n in (10, 64, 100, 500):  # within a shard, a shard's end, across shards, past the end
        assert torch.equal(cache.first_activations(n), fresh[:n].float())
    parts = [torch.cat(list(cache.iter_batches(50, rank=r, world_size=2))) for r in range(2)]
    assert len(parts[0]) + len(parts[1]) == 200
    with pytest.raises(ValueError, match="world_size=5"):
        next(cache.iter_batches(50, world_size=5))


def test_cache_reused_when_matching(base_cfg, cache_dir):
    before = (cache_dir / "manifest.json").stat().st_mtime_ns
    cfg = H.HarvestConfig(**base_cfg, max_tokens=100, device="cpu", shuffle_buffer=7)
    assert H.write_cache(cfg, cache_dir, progress=False) == cache_dir
    assert (cache_dir / "manifest.json").stat().st_mtime_ns == before


def test_cache_refuses_mismatch(base_cfg, cache_dir):
    wrong = H.HarvestConfig(**{**base_cfg, "layer": 5, "hook_point": "mlp_out"}, max_tokens=200)
    with pytest.raises(ValueError, match="layer: cache has 4, requested 5") as info:
        H.ActivationCache(cache_dir, expect=wrong)
    assert "hook_point" in str(info.value)
    with pytest.raises(ValueError, match="does not match"):
        H.write_cache(wrong, cache_dir, progress=False)
    with pytest.raises(ValueError, match="fewer than the 1000 requested"):
        H.write_cache(H.HarvestConfig(**base_cfg, max_tokens=1000), cache_dir, progress=False)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        H.ActivationCache(cache_dir.parent / "absent")


def test_cache_write_is_atomic(smollm2, base_cfg, tmp_path, monkeypatch):
    def broken_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        H.write_cache(H.HarvestConfig(**base_cfg, max_tokens=40), tmp_path / "c", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_cache(smollm2, wikitext_path, tmp_path):
    from hf_topafa.cli import main

    out = tmp_path / "cli"
    argv = ["harvest", "--layer", "2", "--hook-point", "attn_out", "--dataset", str(wikitext_path)]
    argv += ["--context-length", "16", "--max-tokens", "45", "--output", str(out)]
    assert main(argv) == 0
    cache = H.ActivationCache(out)
    assert (cache.num_tokens, cache.manifest["hook_point"], cache.manifest["layer"]) == (
        45,
        "attn_out",
        2,
    )
    assert cache.manifest["context_length"] == 16


def test_cache_overwrite_and_foreign_folder(smollm2, base_cfg, tmp_path):
    out = tmp_path / "c"
    H.write_cache(H.HarvestConfig(**{**base_cfg, "layer": 1}, max_tokens=40), out, progress=False)
    layer2 = H.HarvestConfig(**{**base_cfg, "layer": 2}, max_tokens=40)
    with pytest.raises(ValueError, match="layer: cache has 1, requested 2"):
        H.write_cache(layer2, out, progress=False)
    H.write_cache(layer2, out, overwrite=True, progress=False)
    assert H.ActivationCache(out, expect=layer2).manifest["layer"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp or old folders left
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an activation cache"):
        H.write_cache(layer2, foreign, progress=False)
    assert (foreign / "todo.txt").read_text() == "keep me"


def test_progress_bar_reports_tokens(smollm2, base_cfg, capsys):
    harvester = H.Harvester(H.HarvestConfig(**base_cfg, max_tokens=40))
    assert sum(len(c.acts) for c in harvester.iter_with_tokens(progress=True)) == 40
    err = capsys.readouterr().err
    assert re.search(r"harvest: 100%.*40(\.0)?/40(\.0)? .*tok/s", err), err


def test_several_layers_from_one_forward(smollm2, base_cfg, cache_dir, tmp_path, monkeypatch):
    """--layers 2,4: one truncated forward (to block 4) per batch; each cache equals the
    single-layer harvest of its layer, and a matching cache is reused, not harvested again."""
    cfg = H.HarvestConfig(**base_cfg, max_tokens=200)
    forwards = []
    real = lm.truncated_forward
    monkeypatch.setattr(
        lm, "truncated_forward", lambda *a, **k: forwards.append(a[2]) or real(*a, **k)
    )
    outputs = {2: tmp_path / "layer_2", 4: tmp_path / "layer_4"}
    paths = H.write_layer_caches(cfg, outputs, shard_tokens=64, progress=False)
    assert paths == outputs
    assert forwards and set(forwards) == {4}  # never a second forward for block 2
    four = torch.cat([c.acts for c in H.ActivationCache(paths[4]).iter_with_tokens()])
    alone = torch.cat([c.acts for c in H.ActivationCache(cache_dir).iter_with_tokens()])
    assert torch.equal(four, alone)
    two = H.ActivationCache(paths[2], expect=H.HarvestConfig(**{**base_cfg, "layer": 2}))
    fresh = H.Harvester(H.HarvestConfig(**{**base_cfg, "layer": 2}, max_tokens=200))
    expected = torch.cat([c.acts for c in fresh.iter_with_tokens(progress=False)])
    assert torch.equal(torch.cat([c.acts for c in two.iter_with_tokens()]), expected)
    assert not torch.equal(expected, alone)
    forwards.clear()
    H.write_layer_caches(cfg, outputs, shard_tokens=64, progress=False)
    assert forwards == []


def test_cli_layers_flag(smollm2, wikitext_path, tmp_path):
    from hf_topafa.cli import main

    argv = ["harvest", "--layers", "1,3", "--dataset", str(wikitext_path), "--context-length"]
    argv += ["16", "--max-tokens", "30", "--output", str(tmp_path / "multi")]
    assert main(argv) == 0
    for layer in (1, 3):
        cache = H.ActivationCache(tmp_path / "multi" / f"layer_{layer}")
        assert (cache.num_tokens, cache.manifest["layer"]) == (30, layer)
    with pytest.raises(ValueError, match="12,15,18"):
        H.parse_layers("12;15")
