"""Hub round trips against the stand-in Hub in tests/hub_server.py, driven by the real clients."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers.utils.hub
import yaml
from hub_server import start_hub_server  # tests/ is on sys.path under pytest
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from hf_topafa import SAEConfig, SparseAutoencoder
from hf_topafa.cli import main as cli
from hf_topafa.interop.hub import push_model, push_run, render_model_card

TOKEN = "hf_aliceSecretToken0123456789"
OTHER_TOKEN = "hf_bobSecretToken9876543210"
WRONG_TOKEN = "hf_notAKnownToken5555555555"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A stand-in Hub on 127.0.0.1 with every huggingface_hub/transformers endpoint pointed at it.

    huggingface_hub reads HF_ENDPOINT and its cache/token paths at import, so besides the
    environment we patch the constants it already computed and the module-level clients.
    """
    server = start_hub_server({TOKEN: "alice", OTHER_TOKEN: "bob"})
    endpoint = server.endpoint
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    # transformers keeps one shared HfApi, built for huggingface.co: let it build a fresh one.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    yield server
    server.shutdown()
    server.server_close()
    assert server.state.unrouted == [], "the clients called endpoints the stand-in Hub lacks"


def test_stand_in_hub_round_trip_with_plain_client(hub, tmp_path):
    api = HfApi(token=TOKEN)
    assert api.endpoint == hub.endpoint
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("alice/plain")
    assert url.repo_id == "alice/plain"
    weights = bytes(range(256)) * 40
    (tmp_path / "w.safetensors").write_bytes(weights)
    info = api.upload_file(
        path_or_fileobj=str(tmp_path / "w.safetensors"),
        path_in_repo="w.safetensors",
        repo_id="alice/plain",
    )
    api.upload_file(path_or_fileobj=b'{"a": 1}', path_in_repo="c.json", repo_id="alice/plain")
    # The weights went over Git LFS, the JSON inline.
    assert ("PUT", f"/__lfs__/{info.oid}") not in hub.state.requests  # oid is a commit, not a blob
    assert any(m == "PUT" and p.startswith("/__lfs__/") for m, p in hub.state.requests)
    path = hf_hub_download("alice/plain", "w.safetensors")
    assert open(path, "rb").read() == weights
    assert json.load(open(hf_hub_download("alice/plain", "c.json"))) == {"a": 1}
    files = api.list_repo_files("alice/plain")
    assert sorted(files) == [".gitattributes", "c.json", "w.safetensors"]
    model = api.model_info("alice/plain", files_metadata=True)
    lfs = {s.rfilename: s.lfs for s in model.siblings}
    assert lfs["w.safetensors"] is not None and lfs["w.safetensors"].size == len(weights)
    assert lfs["c.json"] is None


def test_stand_in_hub_private_repo_and_bad_tokens(hub, tmp_path):
    api = HfApi(token=TOKEN)
    api.create_repo("alice/secret", private=True)
    api.upload_file(path_or_fileobj=b"hidden", path_in_repo="x.txt", repo_id="alice/secret")
    assert open(hf_hub_download("alice/secret", "x.txt", token=TOKEN)).read() == "hidden"
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "x.txt", token=False, cache_dir=tmp_path / "c1")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/secret", "x.txt", token=OTHER_TOKEN, cache_dir=tmp_path / "c2")
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=WRONG_TOKEN).model_info("alice/secret")
    assert err.value.response.status_code == 401
    assert WRONG_TOKEN not in str(err.value)
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=OTHER_TOKEN).create_repo("alice/not-bobs")
    assert err.value.response.status_code == 403


def test_stand_in_hub_branches_and_unchanged_reupload(hub):
    api = HfApi(token=TOKEN)
    api.create_repo("alice/branchy")
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="alice/branchy")
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(
            path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="alice/branchy", revision="dev"
        )
    api.create_branch("alice/branchy", branch="dev")
    api.upload_file(
        path_or_fileobj=b"v2", path_in_repo="f.txt", repo_id="alice/branchy", revision="dev"
    )
    assert open(hf_hub_download("alice/branchy", "f.txt")).read() == "v1"
    assert open(hf_hub_download("alice/branchy", "f.txt", revision="dev")).read() == "v2"
    assert open(hf_hub_download("alice/branchy", "f.txt", revision=first.oid)).read() == "v1"
    again = api.upload_file(path_or_fileobj=b"v1", path_in_repo="f.txt", repo_id="alice/branchy")
    assert again.oid == first.oid  # nothing changed, so no new commit
    assert [b.name for b in api.list_repo_refs("alice/branchy").branches] == ["dev", "main"]


# --------------------------------------------------------------------------------------------
# SAEs: push_run, model.push_to_hub, from_pretrained, the CLI


EXAMPLE_REPO = "your-name/topafa-smollm2-135m-l15-resid-post"
METRICS = {  # shaped like what `hf-topafa train` writes
    "tokens_trained": 123456,
    "steps": 30,
    "wall_time_s": 12.3,
    "fvu": 0.125,
    "l0_mean": 7.5,
    "eps_lbo_quartiles": [0.01, 0.02, 0.04],
    "plots": ["/home/someone/run/zf_plot.png"],
    "evaluation": {"reconstruction": {"cosine_similarity": 0.9375}},
}


def tiny_png() -> bytes:
    """A valid 1x1 PNG, standing in for the ZF plot image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def make_sae(seed: int = 0, **overrides) -> SparseAutoencoder:
    settings = dict(
        d_in=16,
        d_sae=64,
        activation="topafa",
        base_model="tiny-org/tiny-lm",
        layer=1,
        hook_point="resid_post",
        dataset="tiny-org/tiny-text",
    )
    settings.update(overrides)
    torch.manual_seed(seed)
    sae = SparseAutoencoder(SAEConfig(**settings))
    with torch.no_grad():  # non-zero biases, so a load that drops them would show
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def make_run(folder, seed: int = 0, **overrides):
    sae = make_sae(seed, **overrides)
    sae.save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "zf_plot.png").write_bytes(tiny_png())
    training = {"max_tokens": 200000, "lr": 3e-4, "hub_token": TOKEN, "output": str(folder)}
    training["activation_cache"] = "/home/someone/cache"
    (folder / "training_config.json").write_text(json.dumps(training))
    return sae


def same_outputs(a: SparseAutoencoder, b: SparseAutoencoder) -> None:
    x = torch.randn(32, a.config.d_in, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    assert torch.equal(out_a.feature_acts, out_b.feature_acts)
    assert torch.equal(out_a.reconstruction, out_b.reconstruction)
    assert a.config.to_dict()["activation"] == b.config.to_dict()["activation"]
    state_b = b.state_dict()
    assert all(torch.equal(t, state_b[name]) for name, t in a.state_dict().items())


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_has_hub_metadata_and_sections(tmp_path):
    make_run(tmp_path)
    card = render_model_card(tmp_path, repo_id="alice/tiny-sae")
    meta = front_matter(card)
    assert meta["library_name"] == "hf-topafa"
    assert {"sparse-autoencoder", "top-afa", "interpretability"} <= set(meta["tags"])
    assert meta["base_model"] == "tiny-org/tiny-lm"
    assert meta["datasets"] == ["tiny-org/tiny-text"]
    assert meta["license"] == "apache-2.0"
    assert "{{" not in card and "}}" not in card
    assert "| Hook point | `resid_post` |" in card and "| Layer | 1 |" in card
    assert "| Features (d_sae) | 64 (4x) |" in card
    assert "**123,456 tokens** of `tiny-org/tiny-text` in 30 steps" in card
    assert "| fvu | 0.125 |" in card and "| l0_mean | 7.5 |" in card
    assert "| eps_lbo_quartiles | 0.01 / 0.02 / 0.04 |" in card
    assert "| evaluation.reconstruction.cosine_similarity | 0.9375 |" in card
    assert "/home/someone" not in card  # local paths stay out
    assert '"lr": 0.0003' in card and TOKEN not in card and "hub_token" not in card
    assert "![ZF plot" in card and "(zf_plot.png)" in card
    assert 'SparseAutoencoder.from_pretrained("alice/tiny-sae")' in card
    assert 'truncated_forward(lm, ids.input_ids, layer=1, hook_point="resid_post")' in card


def test_example_card_matches_the_template():
    """model_cards/example_card.md is what the shipped template renders (see model_cards/)."""
    root = Path(__file__).resolve().parents[1] / "model_cards"
    card = render_model_card(root / "example_run", repo_id=EXAMPLE_REPO)
    assert (root / "example_card.md").read_text() == card, "regenerate model_cards/example_card.md"
    assert "trust_remote_code" not in card  # only cards of --remote-code pushes offer it


def test_model_card_without_provenance_or_files():
    sae = make_sae(
        activation="topk", k=4, base_model=None, layer=None, hook_point=None, dataset=None
    )
    card = render_model_card(sae)
    meta = front_matter(card)
    assert "base_model" not in meta and "datasets" not in meta and "top-k" in meta["tags"]
    assert "k = 4" in card and "not recorded" in card
    assert "No evaluation metrics" in card and "No ZF plot image" in card
    # Without provenance the usage code runs the analysis on activations the user supplies.
    assert "torch.randn(12, 16)" in card


def test_model_card_usage_prints_eps_lbo_that_a_reader_can_see():
    # eps_LBO of a trained SAE is of order 1e-5 (h is tens of thousands): ".4f" printed 0.0000.
    card = render_model_card(make_sae())
    line = next(line for line in card.splitlines() if "eps_LBO=" in line).strip()
    assert line.startswith("print(") and line.endswith(")")
    values = {"token": "cat", "z": 24.0, "f": 23.5, "eps": 3.21e-05}
    printed = eval(line[len("print(") : -1], values)
    assert "3.21e-05" in printed and "0.0000" not in printed
    with pytest.raises(TypeError, match="run folder path"):
        render_model_card(42)


def test_push_run_round_trip_public(hub, tmp_path, caplog):
    caplog.set_level("DEBUG")
    run = tmp_path / "run"
    sae = make_run(run)
    commit = push_run(run, "alice/tiny-sae", token=TOKEN)
    assert commit.startswith(f"{hub.endpoint}/alice/tiny-sae/commit/")
    api = HfApi(token=TOKEN)
    files = set(api.list_repo_files("alice/tiny-sae"))
    expected = {"config.json", "model.safetensors", "metrics.json", "zf_plot.png"}
    assert expected | {"README.md", "training_config.json"} <= files
    assert ("POST", "/api/validate-yaml") in hub.state.requests
    # Loaded back anonymously (public repo), by the class and by AutoModel.
    loaded = SparseAutoencoder.from_pretrained("alice/tiny-sae")
    same_outputs(sae, loaded)
    auto = AutoModel.from_pretrained("alice/tiny-sae")
    assert isinstance(auto, SparseAutoencoder)
    same_outputs(sae, auto)
    card = open(hf_hub_download("alice/tiny-sae", "README.md")).read()
    assert card == render_model_card(run, repo_id="alice/tiny-sae")
    training = json.load(open(hf_hub_download("alice/tiny-sae", "training_config.json")))
    assert training == {"max_tokens": 200000, "lr": 3e-4}  # no token, no local paths
    png = open(hf_hub_download("alice/tiny-sae", "zf_plot.png"), "rb").read()
    assert png == tiny_png()
    assert TOKEN not in card and TOKEN not in caplog.text


def test_second_push_of_unchanged_run_makes_no_commit(hub, tmp_path):
    run = tmp_path / "run"
    make_run(run)
    first = push_run(run, "alice/again", token=TOKEN)
    uploads = [r for r in hub.state.requests if r[0] == "PUT"]
    second = push_run(run, "alice/again", token=TOKEN)
    assert second.oid == first.oid
    assert [r for r in hub.state.requests if r[0] == "PUT"] == uploads  # nothing re-uploaded
    # Changing only the metrics commits again, still without re-sending the weights.
    (run / "metrics.json").write_text(json.dumps({**METRICS, "fvu": 0.25}))
    third = push_run(run, "alice/again", token=TOKEN)
    assert third.oid != first.oid
    assert [r for r in hub.state.requests if r[0] == "PUT"] == uploads
    metrics = json.load(open(hf_hub_download("alice/again", "metrics.json")))
    assert metrics["fvu"] == 0.25
    assert "| fvu | 0.25 |" in open(hf_hub_download("alice/again", "README.md")).read()


def test_private_repo_needs_the_token(hub, tmp_path):
    run = tmp_path / "run"
    sae = make_run(run)
    push_run(run, "alice/private-sae", private=True, token=TOKEN)
    assert HfApi(token=TOKEN).model_info("alice/private-sae").private is True
    with pytest.raises(OSError):  # transformers turns the Hub's 401 into an OSError
        SparseAutoencoder.from_pretrained("alice/private-sae")
    with pytest.raises(OSError):
        SparseAutoencoder.from_pretrained("alice/private-sae", token=OTHER_TOKEN)
    same_outputs(sae, SparseAutoencoder.from_pretrained("alice/private-sae", token=TOKEN))


def test_branch_push_and_load_by_revision(hub, tmp_path):
    main_sae = make_run(tmp_path / "main", seed=0)
    dev_sae = make_run(tmp_path / "dev", seed=1)
    push_run(tmp_path / "main", "alice/branched", token=TOKEN)
    dev_commit = push_run(tmp_path / "dev", "alice/branched", revision="dev", token=TOKEN)
    same_outputs(main_sae, SparseAutoencoder.from_pretrained("alice/branched"))
    same_outputs(dev_sae, SparseAutoencoder.from_pretrained("alice/branched", revision="dev"))
    by_sha = SparseAutoencoder.from_pretrained("alice/branched", revision=dev_commit.oid)
    same_outputs(dev_sae, by_sha)
    assert not torch.equal(main_sae.W_enc, dev_sae.W_enc)


def test_model_push_to_hub_round_trip(hub):
    sae = make_sae(seed=3, activation="jumprelu")
    sae.push_to_hub("alice/direct", token=TOKEN)
    same_outputs(sae, SparseAutoencoder.from_pretrained("alice/direct"))
    sae2 = make_sae(seed=4, activation="jumprelu")
    sae2.push_to_hub("alice/direct", token=TOKEN, revision="exp")
    same_outputs(sae2, AutoModel.from_pretrained("alice/direct", revision="exp"))
    same_outputs(sae, SparseAutoencoder.from_pretrained("alice/direct"))
    card = open(hf_hub_download("alice/direct", "README.md")).read()
    assert "library_name: hf-topafa" in card  # our card, not transformers' generic one
    # transformers' own keywords are accepted: serialization ones change nothing, others pass on
    commit = sae.push_to_hub(
        "alice/direct", token=TOKEN, safe_serialization=True, max_shard_size="5GB",
        commit_description="same weights, transformers-style call",
    )  # fmt: skip
    assert "/alice/direct/commit/" in commit
    with pytest.raises(TypeError, match="unsupported push_to_hub arguments: shard_everything"):
        sae.push_to_hub("alice/direct", token=TOKEN, shard_everything=True)


def test_push_model_uploads_card_and_metrics(hub):
    sae = make_sae(seed=5, activation="batchtopk", k=4)
    commit = push_model(sae, "from-memory", metrics={"fvu": 0.5}, token=TOKEN)
    assert "/alice/from-memory/commit/" in commit  # no namespace given: the token's user
    card = open(hf_hub_download("alice/from-memory", "README.md")).read()
    assert "batch-top-k" in front_matter(card)["tags"] and "| fvu | 0.5 |" in card
    same_outputs(sae, SparseAutoencoder.from_pretrained("alice/from-memory"))


def test_cli_push_with_env_token(hub, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    sae = make_run(run)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli(["push", str(run), "alice/cli-sae", "--private", "--revision", "v1"]) == 0
    out = capsys.readouterr()
    assert "/alice/cli-sae/commit/" in out.out and TOKEN not in out.out + out.err
    loaded = SparseAutoencoder.from_pretrained("alice/cli-sae", revision="v1", token=TOKEN)
    same_outputs(sae, loaded)
    assert HfApi(token=TOKEN).model_info("alice/cli-sae").private is True


def test_cli_errors_are_clear_and_never_show_the_token(hub, tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    assert cli(["push", str(run), "alice/x", "--token", WRONG_TOKEN]) == 2
    err = capsys.readouterr().err
    assert "401" in err and "hint:" in err and WRONG_TOKEN not in err
    # Someone else's namespace: 403 from the Hub, reported without the token.
    assert cli(["push", str(run), "bob/x", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "403" in err and TOKEN not in err
    seen = len(hub.state.requests)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["push", str(empty), "alice/x", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "not an SAE folder" in err and "config.json" in err and "model.safetensors" in err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        push_run(tmp_path / "missing", "alice/x", token=TOKEN)
    assert len(hub.state.requests) == seen  # bad folders are refused before any upload


def test_cli_dry_run_prints_card_without_network(tmp_path, capsys):
    make_run(tmp_path)
    assert cli(["push", str(tmp_path), "alice/dry", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("---\n") and "alice/dry" in out.out
    assert "model.safetensors" in out.err and "README.md" in out.err


def push_tiny_language_model(repo_id: str, folder) -> None:
    """A 2-block Llama with a word-level tokenizer, on the stand-in Hub, as an SAE's base model."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "the cat sat on mat because it was warm".split()
    vocab = {"<unk>": 0, **{word: i + 1 for i, word in enumerate(words)}}
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
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>").save_pretrained(folder)
    api = HfApi(token=TOKEN)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder))


def test_model_card_usage_snippet_runs(hub, tmp_path, monkeypatch, capsys):
    """The card's copy-paste code, run as written, against SAE and base model on the Hub."""
    push_tiny_language_model("alice/tiny-lm", tmp_path / "lm")
    run = tmp_path / "run"
    make_run(run, base_model="alice/tiny-lm", layer=1, hook_point="resid_post")
    push_run(run, "alice/snippet-sae", token=TOKEN)
    card = open(hf_hub_download("alice/snippet-sae", "README.md")).read()
    code = card.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, "model_card_usage", "exec"), {"__name__": "__main__"})
    lines = [line for line in capsys.readouterr().out.splitlines() if "||z||=" in line]
    assert len(lines) == 11  # "The cat sat on the mat because it was warm." -> 11 tokens
    assert "'cat'" in lines[1] and "eps_LBO=" in lines[1]
    assert (tmp_path / "zf_plot_sentence.png").read_bytes().startswith(b"\x89PNG")


REMOTE_SCRIPT = """
import sys
sys.modules["hf_topafa"] = None  # as if hf-topafa were not installed: importing it fails
from safetensors.torch import load_file, save_file
from transformers import AutoModel

sae = AutoModel.from_pretrained("alice/remote-sae", trust_remote_code=True)
assert type(sae).__module__.startswith("transformers_modules"), type(sae).__module__
out = sae(load_file(sys.argv[1])["x"])
save_file({"reconstruction": out.reconstruction.detach(), "acts": out.feature_acts.detach()},
          sys.argv[2])
"""


def test_remote_code_loads_without_the_package(hub, tmp_path):
    run = tmp_path / "run"
    sae = make_run(run)
    push_run(run, "alice/remote-sae", token=TOKEN, remote_code=True)
    files = set(HfApi().list_repo_files("alice/remote-sae"))
    assert {"modeling_sae.py", "configuration_sae.py", "activations.py", "afa.py"} <= files
    card = open(hf_hub_download("alice/remote-sae", "README.md")).read()
    assert 'AutoModel.from_pretrained("alice/remote-sae", trust_remote_code=True)' in card
    # With hf-topafa installed, the installed class still wins when remote code is not trusted.
    same_outputs(sae, AutoModel.from_pretrained("alice/remote-sae"))
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    save_file({"x": x}, tmp_path / "x.safetensors")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "fresh_home"), HF_HUB_DISABLE_XET="1")
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, "x.safetensors", "out.safetensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    with torch.no_grad():
        expected = sae(x)
    assert torch.equal(got["reconstruction"], expected.reconstruction)
    assert torch.equal(got["acts"], expected.feature_acts)


def test_push_uploads_feature_files_and_card_summarises_them(hub, tmp_path, tiny_lm_dir):
    """``hf-topafa features`` output in the run folder goes up with the SAE and into the card."""
    import pyarrow.parquet as pq

    from hf_topafa.data.harvest import HarvestConfig
    from hf_topafa.evaluation.features import write_features

    run = tmp_path / "run"
    sae = make_run(run, base_model=str(tiny_lm_dir), input_normalization="layer_norm")
    harvest = HarvestConfig(model=str(tiny_lm_dir), layer=1, context_length=16, max_tokens=300)
    write_features(sae, harvest, run, top=3, logits=4, progress=False)
    push_run(run, "alice/feature-sae", token=TOKEN)
    files = set(HfApi(token=TOKEN).list_repo_files("alice/feature-sae"))
    assert {"features.parquet", "examples.parquet"} <= files
    for name in ("features.parquet", "examples.parquet"):
        remote = open(hf_hub_download("alice/feature-sae", name), "rb").read()
        assert remote == (run / name).read_bytes()
    card = open(hf_hub_download("alice/feature-sae", "README.md")).read()
    assert "## Features" in card and "(features.parquet)" in card and "(examples.parquet)" in card
    rows = pq.read_table(run / "features.parquet").to_pylist()
    dead = sum(1 for r in rows if r["density"] == 0)
    assert "read the SAE's 64 features over 300 tokens of `bundled:" in card
    assert f"{dead:,} never fired" in card
    densest = max(rows, key=lambda r: (r["density"], -r["feature"]))
    assert f"| {densest['feature']} | {densest['density']:.3g} |" in card
    assert 'hf_hub_download("alice/feature-sae", "features.parquet")' in card
    # without the files the card has no Features section (the example card stays as it is)
    (run / "features.parquet").unlink()
    assert "## Features" not in render_model_card(run, repo_id="alice/feature-sae")


@pytest.mark.parametrize(
    ("activation", "normalization"), [("topafa", "layer_norm"), ("topk", "none")]
)
def test_push_format_saelens_loads_in_saelens_from_the_hub(
    hub, tmp_path, monkeypatch, capsys, activation, normalization
):
    """``push --format saelens`` puts the SAELens folder beside ours: SAELens loads it from a
    snapshot of the repo (after our import, for top-AFA), with our encode and reconstruction."""
    sae_lens = pytest.importorskip(
        "sae_lens", reason='sae-lens is not installed (pip install "hf-topafa[saelens]")'
    )
    if activation == "topafa":
        import hf_topafa.integrations.saelens  # noqa: F401 - registers the architecture

    run = tmp_path / "run"
    sae = make_run(run, activation=activation, input_normalization=normalization, k=4)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    repo = f"alice/{activation}-saelens"
    assert cli(["push", str(run), repo, "--format", "saelens"]) == 0
    capsys.readouterr()
    files = set(HfApi().list_repo_files(repo))
    assert {"config.json", "model.safetensors", "cfg.json", "sae_weights.safetensors"} <= files
    same_outputs(sae, SparseAutoencoder.from_pretrained(repo))  # ours is still there
    loaded = sae_lens.SAE.load_from_disk(huggingface_hub.snapshot_download(repo))
    assert loaded.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(3)) * 2 + 1
    with torch.no_grad():
        acts, out = loaded.encode(x), sae(x)
        x_hat = loaded.decode(acts)
    assert torch.equal(acts != 0, out.feature_acts != 0)
    torch.testing.assert_close(acts, out.feature_acts, rtol=0, atol=1e-5)
    torch.testing.assert_close(x_hat, out.reconstruction, rtol=0, atol=1e-4)
    card = open(hf_hub_download(repo, "README.md")).read()
    assert f'SAE.load_from_disk(snapshot_download("{repo}"))' in card
    assert ("import hf_topafa.integrations.saelens" in card) == (activation == "topafa")


def test_push_format_saelens_refuses_before_uploading(hub, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    make_run(run, input_normalization="layer_norm_biased")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli(["push", str(run), "alice/refused", "--format", "saelens"]) == 2
    assert "no SAELens counterpart" in capsys.readouterr().err
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=TOKEN).model_info("alice/refused")
    assert cli(["push", str(run), "alice/refused", "--format", "saelens", "--dry-run"]) == 2
    assert cli(["push", str(run), "alice/refused", "--format", "sparsify"]) == 2
