"""longformer._files: the one module every checkpoint is read and written through.

Corrupt, truncated and incomplete files must raise CheckpointFileError naming the file; directory
swaps must leave the old or the new directory after a crash at any step; stale temps are cleaned.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from longformer import _files
from longformer.cli import main as cli_main
from longformer.errors import CheckpointFileError


def tensors(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {f"layer.{i}.weight": torch.randn(4, 5, generator=g) for i in range(n)}


# --- reading: every layout, every kind of damage ---------------------------------------------------

def write_layout(directory, layout: str) -> dict[str, torch.Tensor]:
    sd = tensors(4)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "safetensors":
        save_file(sd, str(directory / "model.safetensors"))
    elif layout == "bin":
        torch.save(sd, directory / "pytorch_model.bin")
    else:  # sharded: two shards and an index, in either format
        ext, save = (("safetensors", lambda d, p: save_file(d, str(p))) if layout == "sharded-safetensors"
                     else ("bin", lambda d, p: torch.save(d, p)))
        names = sorted(sd)
        shards = {f"model-0000{i + 1}-of-00002.{ext}": names[i::2] for i in range(2)}
        for shard, keys in shards.items():
            save({k: sd[k] for k in keys}, directory / shard)
        index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
        (directory / index).write_text(json.dumps({"weight_map": {k: s for s, ks in shards.items() for k in ks}}))
    return sd


LAYOUTS = ["safetensors", "bin", "sharded-safetensors", "sharded-bin"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_back_exactly(tmp_path, layout):
    sd = write_layout(tmp_path, layout)
    got = _files.read_state_dict(tmp_path)
    assert sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def weight_file(directory):
    return next(p for p in sorted(directory.iterdir()) if p.suffix in (".safetensors", ".bin"))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("damage", ["truncate-half", "truncate-header", "empty", "garbage"])
def test_damaged_weights_name_the_file(tmp_path, layout, damage):
    write_layout(tmp_path, layout)
    victim = weight_file(tmp_path)
    data = victim.read_bytes()
    victim.write_bytes({"truncate-half": data[: len(data) // 2], "truncate-header": data[:5], "empty": b"",
                        "garbage": os.urandom(len(data))}[damage])
    with pytest.raises(CheckpointFileError) as err:
        _files.read_state_dict(tmp_path)
    assert str(victim) in str(err.value) and "re-download or re-save" in str(err.value)


@pytest.mark.parametrize("layout", ["sharded-safetensors", "sharded-bin"])
def test_incomplete_shards_are_errors(tmp_path, layout):
    write_layout(tmp_path, layout)
    shard = weight_file(tmp_path)
    shard.unlink()
    with pytest.raises(CheckpointFileError, match=f"missing .*{shard.name}"):
        _files.read_state_dict(tmp_path)
    # a shard that holds fewer tensors than the index says (from another version of the model)
    write_layout(tmp_path, layout)
    index = next(tmp_path.glob("*.index.json"))
    weight_map = json.loads(index.read_text())["weight_map"]
    weight_map["layer.9.weight"] = shard.name
    index.write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointFileError, match=r"lists 1 tensor\(s\) its shards do not hold.*layer.9.weight"):
        _files.read_state_dict(tmp_path)
    index.write_text("{not json")
    with pytest.raises(CheckpointFileError, match=f"{index.name} is not valid JSON"):
        _files.read_state_dict(tmp_path)


def test_no_weights_and_bad_config(tmp_path):
    with pytest.raises(CheckpointFileError, match="no weights in .* expected one of"):
        _files.read_state_dict(tmp_path)
    (tmp_path / "config.json").write_text('{"hidden_size": 8,')
    with pytest.raises(CheckpointFileError, match="config.json is not valid JSON"):
        _files.read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointFileError, match="holds a JSON list"):
        _files.read_config(tmp_path)


class NotTensors:
    """Any class: unpickling it would run code, which a weights file must never do."""


def test_a_bin_file_that_is_code_is_refused(tmp_path):
    torch.save({"x": NotTensors()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointFileError, match="pytorch_model.bin cannot be read as a torch weights file"):
        _files.read_state_dict(tmp_path)


# --- the model loaders and the CLI report damage the same way --------------------------------------

@pytest.fixture
def saved_encoder(tmp_path):
    from longformer.encoder import LongformerConfig, LongformerModel

    config = LongformerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=40, attention_window=4)
    LongformerModel(config).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_truncated_checkpoint_through_from_pretrained_and_convert_cli(saved_encoder, capsys):
    from longformer.encoder import LongformerModel

    weights = saved_encoder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointFileError, match=str(weights)):
        LongformerModel.from_pretrained(saved_encoder)
    assert cli_main(["convert", str(saved_encoder), str(saved_encoder.parent / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longformer convert: error:")


def test_config_without_a_shape_field_is_named(saved_encoder):
    from longformer.encoder import LongformerModel

    config = json.loads((saved_encoder / "config.json").read_text())
    del config["hidden_size"]
    (saved_encoder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFileError, match=r"config.json lacks required field\(s\) \['hidden_size'\]"):
        LongformerModel.from_pretrained(saved_encoder)


def test_debug_shows_the_traceback(saved_encoder):
    (saved_encoder / "config.json").write_text("{")
    env = {**os.environ, "LONGFORMER_DEBUG": "1"}
    cmd = [sys.executable, "-m", "longformer", "convert", str(saved_encoder), str(saved_encoder.parent / "o")]
    plain = subprocess.run(cmd[:3] + cmd[3:], capture_output=True, text=True)
    debug = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "is not valid JSON" in plain.stderr
    assert debug.returncode != 2 and "Traceback" in debug.stderr and "CheckpointFileError" in debug.stderr


# --- writing ---------------------------------------------------------------------------------------

def test_atomic_write_leaves_whole_files_and_ordinary_permissions(tmp_path):
    target = tmp_path / "a.json"
    _files.atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def failing(f):
        f.write(b"half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        _files.atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"x": 1}  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temp left


def fill(directory, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights").write_text(text)


def test_replace_dir_and_recovery_after_a_crash_at_each_step(tmp_path):
    final = tmp_path / "last"
    fill(final, "old")
    staged = _files.staging_dir(final)
    fill(staged, "new")
    # a crash between the two renames: final moved aside, the new one not yet in place
    os.replace(final, tmp_path / ".last.old")
    assert _files.recover_dir(final) == final and (final / "weights").read_text() == "old"
    # a crash after the second rename, before the old copy was removed
    os.replace(final, tmp_path / ".last.old")
    os.replace(staged, final)
    _files.recover_dir(final)
    assert (final / "weights").read_text() == "new" and not (tmp_path / ".last.old").exists()
    # the whole swap
    staged = _files.staging_dir(final)
    fill(staged, "newer")
    _files.replace_dir(staged, final)
    assert (final / "weights").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_build_dir_failure_keeps_the_old_dir(tmp_path):
    final = tmp_path / "model"
    fill(final, "old")

    def broken(tmp):
        fill(tmp, "half")
        raise ValueError("conversion failed")

    with pytest.raises(ValueError):
        _files.build_dir(final, broken)
    assert (final / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_stale_temps_of_dead_writers_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / f".checkpoint.pt.{dead_pid}.abc123.tmp"
    stale_dir = tmp_path / f".last.{dead_pid}.xyz.tmpdir"
    mine = tmp_path / f".curve.png.{os.getpid()}.q1.tmp"  # this process may be writing it right now
    stale_file.write_bytes(b"x")
    stale_dir.mkdir()
    mine.write_bytes(b"x")
    (tmp_path / "keep.tmp").write_bytes(b"x")  # not one of ours
    removed = _files.clean_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale_file.name, stale_dir.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "keep.tmp"])


# --- hub ids ---------------------------------------------------------------------------------------

def test_hub_id_resolves_from_the_offline_cache(offline_hub, saved_encoder, monkeypatch, tmp_path):
    from longformer.encoder import LongformerModel

    snapshot = offline_hub("acme/tiny-longformer", saved_encoder)
    assert _files.resolve_checkpoint("acme/tiny-longformer") == snapshot
    ours = LongformerModel.from_pretrained(saved_encoder)
    loaded = LongformerModel.from_pretrained("acme/tiny-longformer")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), loaded.state_dict().values()))
    # revisions: a branch name, and org/name@revision
    other = offline_hub("acme/tiny-longformer", saved_encoder, revision="v2", commit="f" * 40)
    assert _files.resolve_checkpoint("acme/tiny-longformer", revision="v2") == other
    assert _files.resolve_checkpoint("acme/tiny-longformer@v2") == other
    # a local directory of the same spelling wins over the id
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "tiny-longformer").symlink_to(saved_encoder, target_is_directory=True)
    assert _files.resolve_checkpoint("acme/tiny-longformer").resolve() == saved_encoder.resolve()


def test_hub_id_not_cached_offline_says_how_to_get_it(offline_hub, capsys, tmp_path):
    with pytest.raises(CheckpointFileError, match=r"acme/absent is not in the Hugging Face cache .*HF_HUB_OFFLINE"
                                                  r".*hf download acme/absent"):
        _files.resolve_checkpoint("acme/absent")
    assert cli_main(["convert", "acme/absent", str(tmp_path / "out")]) == 2
    assert "hf download acme/absent" in capsys.readouterr().err


def test_hub_cache_without_weights_is_an_error(offline_hub, saved_encoder):
    offline_hub("acme/config-only", saved_encoder, only=("config.json",))
    with pytest.raises(CheckpointFileError, match="has no weight files .*only part of it is cached"):
        _files.resolve_checkpoint("acme/config-only")
    assert _files.resolve_checkpoint("acme/config-only", weights=False).name == "0123456789abcdef0123456789abcdef01234567"


def test_paths_that_are_not_ids(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="is a file; pass the checkpoint directory"):
        _files.resolve_checkpoint(tmp_path / "file.bin")
    with pytest.raises(CheckpointFileError, match="is not a directory"):
        _files.resolve_checkpoint(tmp_path / "missing" / "deeper")
    with pytest.raises(CheckpointFileError, match="revisions apply to hub ids only"):
        _files.resolve_checkpoint(tmp_path, revision="main")
