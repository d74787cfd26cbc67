"""DVC-compatible content hashes of pipeline outputs, so Dagster metadata names the exact data.

An asset that writes a DVC-tracked output (data/raw, data/curated, artifacts/models, ...)
records `dvc_md5(path)` as metadata: the same value `dvc.lock` stores for that output after
`dvc repro`, computed without importing DVC (fast, and no repository needed).

DVC's algorithm (dvc-data 3.x, hash name ``md5``):
- a file: the md5 of its bytes;
- a directory: the md5 of ``json.dumps(entries, sort_keys=True)`` where ``entries`` lists
  ``{"md5": <file md5>, "relpath": <posix path>}`` for every file under it, sorted by
  relpath; the value gets the suffix ``.dir``. Empty directories do not count.
Differences: patterns in ``.dvcignore`` are not applied (the repository's .dvcignore ignores
nothing inside the outputs), and symlinks are followed like DVC does for regular outputs.

``python -m orchestration.dvc_versions pretrain-curve`` copies the latest encoder run's loss
curve to metrics/pretrain.csv, the fixed path dvc.yaml's `plots:` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from cohorts.files import atomic_write_bytes
from orchestration.params import REPO_ROOT, resolve_path, section

DIR_SUFFIX = ".dir"
_CHUNK_BYTES = 1 << 20


def file_md5(path: Path) -> str:
    """md5 of a file's bytes, read in chunks (archives hold large DICOM and npy files)."""
    digest = hashlib.md5(usedforsecurity=False)
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def dir_entries(path: Path) -> list[dict[str, str]]:
    """DVC's directory manifest: one {md5, relpath} per file, sorted by posix relpath."""
    root = Path(path)
    entries = []
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            file = Path(dirpath) / name
            entries.append({"md5": file_md5(file), "relpath": file.relative_to(root).as_posix()})
    return sorted(entries, key=lambda entry: entry["relpath"])


def dvc_md5(path: Path) -> str:
    """The md5 DVC records for an output: plain md5 of a file, manifest md5 + '.dir' of a folder."""
    path = Path(path)
    if path.is_dir():
        manifest = json.dumps(dir_entries(path), sort_keys=True).encode("utf-8")
        return hashlib.md5(manifest, usedforsecurity=False).hexdigest() + DIR_SUFFIX
    if path.is_file():
        return file_md5(path)
    raise FileNotFoundError(f"{path}: no such file or directory to hash")


def locked_outs(lock_path: Path = REPO_ROOT / "dvc.lock") -> dict[str, dict[str, Any]]:
    """Every output recorded in dvc.lock, by its path relative to the repository root."""
    lock = yaml.safe_load(Path(lock_path).read_text()) if Path(lock_path).exists() else None
    outs: dict[str, dict[str, Any]] = {}
    for stage in (lock or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            outs[out["path"]] = out
    return outs


def locked_md5(out_path: str, lock_path: Path = REPO_ROOT / "dvc.lock") -> str | None:
    """The md5 dvc.lock holds for an output path (e.g. 'data/raw'), or None if not locked."""
    out = locked_outs(lock_path).get(Path(out_path).as_posix())
    return None if out is None else out.get("md5")


def dvc_metadata(path: Path, root: Path = REPO_ROOT) -> dict[str, Any]:
    """Dagster metadata naming an output's DVC version: its md5 and repo-relative path."""
    import dagster as dg  # local: the pretrain-curve command below must start fast

    path = Path(path)
    try:
        shown = path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        shown = str(path)
    return {
        "dvc_md5": dg.MetadataValue.text(dvc_md5(path)),
        "dvc_path": dg.MetadataValue.path(shown),
    }


def copy_pretrain_curve(artifacts: Path, metrics: Path) -> Path:
    """Copy the latest encoder run's pretrain.csv to metrics/pretrain.csv (a fixed plot path)."""
    pointer = artifacts / "encoders" / "latest.json"
    if not pointer.exists():
        raise FileNotFoundError(f"{pointer}: no pretrained encoder; materialise jepa_encoder")
    run_dir = artifacts / json.loads(pointer.read_text())["path"]
    curve = run_dir / "pretrain.csv"
    if not curve.exists():
        raise FileNotFoundError(f"{curve}: the pretraining run wrote no loss curve")
    return atomic_write_bytes(metrics / "pretrain.csv", curve.read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.dvc_versions")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pretrain-curve", help="copy the latest pretraining curve to metrics/")
    md5 = sub.add_parser("md5", help="print the DVC md5 of files or folders")
    md5.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "pretrain-curve":
        paths = section("paths")
        out = copy_pretrain_curve(resolve_path(paths["artifacts"]), resolve_path(paths["metrics"]))
        print(out)
    else:
        for path in args.paths:
            print(f"{dvc_md5(Path(path))}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
