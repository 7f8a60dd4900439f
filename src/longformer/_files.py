"""Checkpoint files, the bottom layer every other module reads and writes them through.

Writing: every file goes to a temp file beside its target, is flushed to disk (fsync), and is
renamed over the target, so a kill at any moment leaves the old file or the new one. A directory
(a model dir, a run's ``last``) is built in a staging dir and swapped in by `replace_dir`; a crash
between its two renames is undone by `recover_dir`. Temp names carry the writer's pid, so the next
run can tell a stale temp (its writer is dead) from one being written, and `clean_stale_temps`
removes the stale ones.

Reading: `read_state_dict` takes model.safetensors, a sharded model.safetensors.index.json,
pytorch_model.bin or a sharded pytorch_model.bin.index.json. A corrupt, truncated or incomplete
file raises `CheckpointFileError` naming the file and what to do; so does a malformed JSON file.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .errors import CheckpointFileError

# Weight files in the order the loaders look for them (transformers' order).
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)
_REDO = "re-download or re-save it (a copy interrupted half-way looks like this)"
# .NAME.PID.RANDOM.tmp (a file) or .NAME.PID.RANDOM.tmpdir (a staging dir); see _temp_prefix.
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp(dir)?$")
_OLD_SUFFIX = ".old"
T = TypeVar("T")


# --- writing -------------------------------------------------------------------------------------

def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a rename is an update of the directory itself)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some filesystems do not open directories; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(temp_path)`` for a temp file beside ``path``, fsync it, then rename it over ``path``.

    For writers that want a file name (safetensors' save_file, matplotlib's savefig)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the published file should be ordinary
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write_path(path, to_file)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_safetensors(path: str | os.PathLike, tensors: dict[str, Any]) -> None:
    """Write ``tensors`` (contiguous CPU tensors) as a safetensors file, atomically."""
    from safetensors.torch import save_file

    atomic_write_path(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj)`` atomically (training states)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def staging_dir(final: str | os.PathLike) -> Path:
    """A new empty dir beside ``final`` to build its next version in, then `replace_dir` it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=_temp_prefix(final), suffix=".tmpdir"))


def build_dir(final: str | os.PathLike, build: Callable[[Path], T]) -> T:
    """Write a whole directory: ``build(staging)`` fills a staging dir beside ``final``, which then
    replaces ``final`` (`replace_dir`); on any error the staging dir is removed and ``final`` is
    untouched. Returns what ``build`` returned."""
    staged = staging_dir(final)
    try:
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700; the published dir should be ordinary
        result = build(staged)
        replace_dir(staged, final)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return result


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}{_OLD_SUFFIX}")


def replace_dir(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make the fully written dir ``staged`` the new ``final``.

    The old ``final`` is moved aside to ``.NAME.old`` first and removed last. A crash leaves one of:
    the old ``final`` (plus a stale staging dir); no ``final`` but ``.NAME.old`` (between the two
    renames: `recover_dir` puts it back); or the new ``final`` plus ``.NAME.old`` (`recover_dir`
    removes it). Never a half-written ``final``.
    """
    staged, final = Path(staged), Path(final)
    for file in staged.rglob("*"):
        if file.is_file():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
    _fsync_dir(staged)
    recover_dir(final)
    old = _old(final)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_dir(final: str | os.PathLike) -> Path:
    """Undo what a crash inside `replace_dir` left: restore ``.NAME.old`` when ``final`` is missing,
    drop it when ``final`` is there. Returns ``final``. Cheap when there is nothing to do."""
    final = Path(final)
    old = _old(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)
            _fsync_dir(final.parent)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def clean_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove temp files and staging dirs in ``directory`` whose writer process is dead (a kill
    during a save leaves them). Temps of live processes, this one included, are left alone.
    Returns what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.is_dir():
        return removed
    for entry in directory.iterdir():
        match = _TEMP.match(entry.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --- reading -------------------------------------------------------------------------------------

def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a missing or malformed file raises CheckpointFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointFileError(f"{path} is not valid JSON ({err}); {_REDO}") from None


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """A config.json (the file, or the checkpoint dir holding it), which must be a JSON object."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointFileError(f"{path} has no config.json (expected a Hugging Face checkpoint dir)")
        path = path / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise CheckpointFileError(f"{path} holds a JSON {type(config).__name__}, not an object of config fields")
    return config


def require_fields(config: dict[str, Any], fields: tuple[str, ...], where: str | os.PathLike) -> None:
    """Fields a model's shape depends on must be in config.json: a default would build another model."""
    missing = [f for f in fields if f not in config]
    if missing:
        raise CheckpointFileError(f"{where} lacks required field(s) {missing}; {_REDO}")


def weight_files(directory: str | os.PathLike) -> tuple[str, list[Path]]:
    """(the layout found, the files to read): a single file, or an index's shards."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return name, [path]
        index = read_json(path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointFileError(f"{path} has no weight_map of tensor names to shard files; {_REDO}")
        shards = sorted(set(weight_map.values()))
        absent = [s for s in shards if not (directory / s).is_file()]
        if absent:
            raise CheckpointFileError(f"{path} names shard file(s) missing from {directory}: {absent}; "
                                      "download every shard the index lists")
        return name, [directory / s for s in shards]
    raise CheckpointFileError(f"no weights in {directory}: expected one of {list(WEIGHT_FILES)}")


def read_state_dict(directory: str | os.PathLike) -> dict[str, Any]:
    """Every tensor of a checkpoint dir (see `weight_files`), on the CPU.

    A sharded index must be covered: a tensor it lists that its shard lacks is an error."""
    directory = Path(directory)
    layout, files = weight_files(directory)
    state: dict[str, Any] = {}
    for file in files:
        state.update(read_tensor_file(file))
    if layout.endswith(".index.json"):
        listed = read_json(directory / layout)["weight_map"]
        lost = sorted(k for k in listed if k not in state)
        if lost:
            raise CheckpointFileError(
                f"{directory / layout} lists {len(lost)} tensor(s) its shards do not hold (e.g. {lost[:3]}); "
                f"the shards are from another version or incomplete: {_REDO}")
    return state


def read_tensor_file(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of one .safetensors or torch .bin file; corrupt or truncated: CheckpointFileError."""
    import torch

    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointFileError(f"{path} is empty (0 bytes); {_REDO}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointFileError(f"{path} is corrupt or truncated ({err}); {_REDO}") from None
    try:
        # weights_only: a checkpoint is data, never code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- zip, pickle and EOF errors all mean the same here
        raise CheckpointFileError(f"{path} cannot be read as a torch weights file ({_first_line(err)}); {_REDO}") from None
    if not isinstance(state, dict):
        raise CheckpointFileError(f"{path} holds a {type(state).__name__}, not a dict of tensors")
    return state


def read_torch(path: str | os.PathLike, what: str) -> Any:
    """A training state this project saved with `save_torch` (not only tensors, so not weights_only:
    only load run directories you made). ``what`` names the file's role in the error."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"no {what} at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001
        raise CheckpointFileError(f"{what} {path} is corrupt or truncated ({_first_line(err)}); delete it to "
                                  "start over, or restore it from a copy") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


# --- hub ids -------------------------------------------------------------------------------------

# org/name (or a bare name), optionally @revision: a string no local path would be mistaken for.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w./-]+))?$")
# What a model dir needs besides its weights; weights are fetched in a second step, so that a repo
# with both safetensors and .bin files costs one download, not two.
_META_PATTERNS = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
                  "sentencepiece.bpe.model", "spiece.model", "sentence_bert_config.json", "1_Pooling/config.json"]
_WEIGHT_PATTERNS = (["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
                    ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"])
_TRUE = ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time: $HF_HUB_CACHE, else
    $HF_HOME/hub, else ~/.cache/huggingface/hub (huggingface_hub's own order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_checkpoint(name_or_path: str | os.PathLike, revision: str | None = None, *,
                       weights: bool = True) -> Path:
    """The local directory of a checkpoint given as a directory or a hub id.

    A local directory wins over a hub id of the same spelling. A hub id ``org/name`` (optionally
    ``org/name@revision``, or ``revision=``) is fetched through huggingface_hub into its cache, or
    found there when $HF_HUB_OFFLINE is set; only config, tokenizer and one set of weight files
    (safetensors if the repo has them, else pytorch_model.bin) are fetched. ``weights=False`` fetches
    the config and tokenizer files only.
    """
    text = os.fspath(name_or_path)
    local = Path(text).expanduser()
    if local.is_dir():
        if revision is not None:
            raise CheckpointFileError(f"revision={revision!r} was given for the local directory {local}; "
                                      "revisions apply to hub ids only")
        return local
    if local.exists():
        raise CheckpointFileError(f"{local} is a file; pass the checkpoint directory that holds it")
    match = _HUB_ID.match(text)
    if match is None or text.startswith(("./", "../", "~")):
        raise CheckpointFileError(f"{text} is not a directory (expected a checkpoint dir with config.json and "
                                  "weights, or a hub id such as allenai/longformer-base-4096)")
    if match["revision"] is not None:
        if revision is not None and revision != match["revision"]:
            raise CheckpointFileError(f"{text} names revision {match['revision']!r} but revision={revision!r} was given")
        revision = match["revision"]
    return _download(match["repo"], revision, weights)


def _download(repo: str, revision: str | None, weights: bool) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise CheckpointFileError(f"{repo} is not a local directory, and loading hub ids needs huggingface_hub: "
                                  "pip install huggingface_hub (or pass a local directory)") from None
    name = repo + (f"@{revision}" if revision else "")
    offline = hub_offline()
    cache = hub_cache_dir()

    def fetch(patterns: list[str]) -> Path:
        return Path(huggingface_hub.snapshot_download(repo, revision=revision, cache_dir=cache,
                                                      allow_patterns=patterns, local_files_only=offline))

    try:
        path = fetch(_META_PATTERNS)
        if weights:
            for patterns in _WEIGHT_PATTERNS:
                if _has_weights(path):
                    break
                path = fetch(patterns)
    except LocalEntryNotFoundError:
        how = ("HF_HUB_OFFLINE is set" if offline else "the hub could not be reached")
        raise CheckpointFileError(
            f"{name} is not in the Hugging Face cache ({cache}) and {how}; fetch it where the network is "
            f"reachable with `hf download {repo}` (same HF_HOME/HF_HUB_CACHE), or pass a local directory") from None
    except RevisionNotFoundError:
        raise CheckpointFileError(f"{repo} has no revision {revision!r} on the hub") from None
    except GatedRepoError:
        raise CheckpointFileError(f"{repo} is gated: accept its terms on the hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise CheckpointFileError(f"{repo} is neither a local directory nor a model on the hub (or it is "
                                  "private: log in with `hf auth login`)") from None
    except HfHubHTTPError as err:
        raise CheckpointFileError(f"could not fetch {name} from the hub: {_first_line(err)}") from None
    if not (path / "config.json").is_file():
        raise CheckpointFileError(f"{name} (at {path}) has no config.json; is it a transformers model repo?")
    if weights and not _has_weights(path):
        hint = " (HF_HUB_OFFLINE is set and only part of it is cached: fetch it with `hf download " + repo + "`)"
        raise CheckpointFileError(f"{name} (at {path}) has no weight files {list(WEIGHT_FILES)}"
                                  + (hint if offline else ""))
    return path


def _has_weights(path: Path) -> bool:
    return any((path / name).is_file() for name in WEIGHT_FILES)


# --- caches --------------------------------------------------------------------------------------

def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where longformer keeps what it makes once and reuses (converted models, compiled kernels,
    datasets): ``explicit``, else $LONGFORMER_CACHE, else $XDG_CACHE_HOME/longformer, else
    ~/.cache/longformer."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("LONGFORMER_CACHE"):
        return Path(os.environ["LONGFORMER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "longformer"
