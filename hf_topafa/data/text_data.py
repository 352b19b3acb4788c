"""Text for harvesting: a dataset's records (Hub, local file or folder, or the bundled
WikiText-2 sample) and their tokens packed into fixed-length windows."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ..names import LOCAL_FORMATS
from ..sources import dataset_looks_local

DATA_DIR = Path(__file__).parent  # the bundled files sit beside the data modules
BUNDLED_SAMPLE = DATA_DIR / "wikitext-2-raw-test-sample.txt"


def is_plain_text(path: Path) -> bool:
    """A .txt file, or a folder whose files are all .txt: records are lines of running text."""
    if path.is_dir():
        files = [f for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")]
        return bool(files) and all(f.suffix == ".txt" for f in files)
    return path.suffix == ".txt"


def _is_blank(path: Path, limit: int = 1 << 20) -> bool:
    """No text at all (checked for files up to ``limit`` bytes; larger ones are assumed fine)."""
    size = path.stat().st_size
    return size == 0 or (size <= limit and not path.read_bytes().strip())


def load_text_dataset(
    dataset: str | os.PathLike | None,
    text_column: str = "text",
    split: str = "train",
    streaming: bool = False,
    rank: int = 0,
    world_size: int = 1,
    *,
    config_name: str | None = None,
) -> Iterator[str]:
    """Yield the non-blank texts of a dataset, this process's part only.

    ``.txt`` files (or a folder of them) give one record per line with its line break kept (blank
    lines skipped), so packed windows read as the original text; other formats give one record
    per row. Local files are read in place with ``streaming``, else through the datasets cache.
    """
    import datasets

    if dataset is None:
        dataset = BUNDLED_SAMPLE
    dataset = os.fspath(dataset)
    if dataset_looks_local(dataset):
        path = Path(dataset).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"dataset file not found: {path}")
        if path.is_file() and _is_blank(path):
            raise ValueError(
                f"dataset file {path} is empty or holds only whitespace; give a file with text"
            )
        if path.is_dir() and not is_plain_text(path):
            ds = datasets.load_dataset(str(path), split=split, streaming=streaming)
        else:
            builder = "text" if path.is_dir() else LOCAL_FORMATS.get(path.suffix)
            if builder is None:
                raise ValueError(
                    f"unsupported dataset file type {path.suffix!r} ({path}): use one of "
                    f"{', '.join(LOCAL_FORMATS)}, a folder, or a Hub dataset id"
                )
            files = sorted(map(str, path.rglob("*.txt"))) if path.is_dir() else [str(path)]
            extra = {"keep_linebreaks": True} if builder == "text" else {}
            ds = datasets.load_dataset(
                builder, data_files={split: files}, split=split, streaming=streaming, **extra
            )
        if is_plain_text(path):
            text_column = "text"
    else:
        ds = datasets.load_dataset(dataset, config_name, split=split, streaming=streaming)
    columns = ds.column_names
    if columns is None:  # streaming dataset without declared features: peek at one record
        columns = list(next(iter(ds)).keys())
    if text_column not in columns:
        raise ValueError(
            f"text column {text_column!r} not found in dataset {dataset!r}; "
            f"columns found: {', '.join(columns)}"
        )
    if world_size > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world_size)
    return _texts(ds.select_columns([text_column]), text_column)


def _texts(ds, text_column: str) -> Iterator[str]:
    for batch in ds.iter(batch_size=256):
        for text in batch[text_column]:
            if text and not text.isspace():
                yield text


def iter_windows(
    tokenizer, texts: Iterable[str], context_length: int, separator_id: int | None = None
) -> Iterator[torch.Tensor]:
    """Pack tokenized texts back to back into windows of ``context_length`` token ids.

    Each text is tokenized with the tokenizer's own special tokens (a BOS where the model expects
    one) and followed by ``separator_id`` when given (typically EOS between documents). The last
    incomplete window is dropped.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    buffer: list[int] = []
    batch: list[str] = []

    def flush():
        for ids in tokenizer(batch, add_special_tokens=True)["input_ids"]:
            buffer.extend(ids)
            if separator_id is not None:
                buffer.append(separator_id)
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 64:
            flush()
            start = 0
            while len(buffer) - start >= context_length:
                yield torch.tensor(buffer[start : start + context_length], dtype=torch.long)
                start += context_length
            del buffer[:start]
    flush()
    for start in range(0, len(buffer) - context_length + 1, context_length):
        yield torch.tensor(buffer[start : start + context_length], dtype=torch.long)
