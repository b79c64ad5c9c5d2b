#!/usr/bin/env python
"""How do I get the public datasets? Fetch them from their official locations, checksums verified.

    python scripts/download_data.py 3bpa                 # -> data/3bpa/
    python scripts/download_data.py oc20_s2ef_200k oc20_s2ef_val_id --root /scratch/data
    python scripts/download_data.py --list

Checksums are the publishers' own: the MD5s in fairchem's dataset tables (OC20,
OC22), the MD5 figshare reports for MPTrj, and the git blob SHA-1 GitHub reports for
the BOTNet-datasets files at a pinned commit (3BPA, acac). A download goes to
``<file>.partial`` (resumed with an HTTP Range request after an interruption) and is
renamed only once its checksum matches; archives are then unpacked next to it.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

FAIR = "https://dl.fbaipublicfiles.com/opencatalystproject/data"
# name: (url, md5, folder under --root) from fairchem's DATASET.md tables
FAIRCHEM_ARCHIVES = {
    "oc20_s2ef_200k": (f"{FAIR}/s2ef_train_200K.tar", "f8d0909c2623a393148435dede7d3a46", "oc20"),
    "oc20_s2ef_2M": (f"{FAIR}/s2ef_train_2M.tar", "953474cb93f0b08cdc523399f03f7c36", "oc20"),
    "oc20_s2ef_20M": (f"{FAIR}/s2ef_train_20M.tar", "863bc983245ffc0285305a1850e19cf7", "oc20"),
    "oc20_s2ef_all": (f"{FAIR}/s2ef_train_all.tar", "12a7087bfd189a06ccbec9bc7add2bcd", "oc20"),
    "oc20_s2ef_val_id": (f"{FAIR}/s2ef_val_id.tar", "f57f7f5c1302637940f2cc858e789410", "oc20"),
    "oc20_s2ef_val_ood_ads": (f"{FAIR}/s2ef_val_ood_ads.tar", "431ab0d7557a4639605ba8b67793f053", "oc20"),
    "oc20_s2ef_val_ood_cat": (f"{FAIR}/s2ef_val_ood_cat.tar", "532d6cd1fe541a0ddb0aa0f99962b7db", "oc20"),
    "oc20_s2ef_val_ood_both": (f"{FAIR}/s2ef_val_ood_both.tar", "5731862978d80502bbf7017d68c2c729", "oc20"),
    "oc20_is2re": (f"{FAIR}/is2res_train_val_test_lmdbs.tar.gz", "cfc04dd2f87b4102ab2f607240d25fb1", "oc20"),
    "oc22_s2ef": (f"{FAIR}/oc22/s2ef_total_train_val_test_lmdbs.tar.gz", "ebea523c6f8d61248a37b4dd660b11e6", "oc22"),
}
BOTNET = ("davkovacs/BOTNet-datasets", "29e6d467317e4b5967b7ea5cbee54de953fa0d45")
GITHUB_FOLDERS = {"3bpa": ("dataset_3BPA", "3bpa"), "acac": ("dataset_acac", "acac")}
MPTRJ = (23713842, "MPtrj_2022.9_full.json", "mptrj")  # figshare article, file name, folder
DATASETS = sorted([*FAIRCHEM_ARCHIVES, *GITHUB_FOLDERS, "mptrj"])


def _hash(path: Path, algorithm: str, git_blob: bool = False) -> str:
    digest = hashlib.new(algorithm)
    if git_blob:
        digest.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _json(url: str):
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "mlip-download"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def fetch(url: str, target: Path, algorithm: str, expected: str, git_blob: bool = False) -> Path:
    """Download ``url`` to ``target`` (resuming a ``.partial``) and check its hash; returns ``target``."""
    if target.is_file() and _hash(target, algorithm, git_blob) == expected:
        print(f"ok       {target} (already verified)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mlip-download", **({"Range": f"bytes={have}-"} if have else {})})
    with urllib.request.urlopen(request, timeout=60) as response:
        mode = "ab" if have and response.status == 206 else "wb"
        total = int(response.headers.get("Content-Length", 0)) + (have if mode == "ab" else 0)
        done = have if mode == "ab" else 0
        with open(partial, mode) as out:
            while chunk := response.read(1 << 22):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{target.name}: {done / 1e9:.2f} / {total / 1e9:.2f} GB", end="", file=sys.stderr)
    print(file=sys.stderr)
    found = _hash(partial, algorithm, git_blob)
    if found != expected:
        partial.unlink()
        raise SystemExit(f"{url}: {algorithm} {found} differs from the published {expected}; removed the download")
    partial.replace(target)
    print(f"verified {target} ({algorithm} {expected})")
    return target


def unpack(archive: Path) -> None:
    """Unpack a tar archive next to itself, once (a marker file records completion)."""
    marker = archive.with_name(archive.name + ".unpacked")
    if marker.exists():
        return
    print(f"unpacking {archive}")
    with tarfile.open(archive) as tar:
        tar.extractall(archive.parent, filter="data")
    marker.touch()


def download(name: str, root: Path) -> None:
    if name in FAIRCHEM_ARCHIVES:
        url, md5, folder = FAIRCHEM_ARCHIVES[name]
        unpack(fetch(url, root / folder / url.rsplit("/", 1)[1], "md5", md5))
    elif name in GITHUB_FOLDERS:
        folder, target = GITHUB_FOLDERS[name]
        repo, commit = BOTNET
        listing = _json(f"https://api.github.com/repos/{repo}/contents/{folder}?ref={commit}")
        for entry in listing:
            if entry["type"] == "file" and entry["name"].endswith(".xyz"):
                fetch(entry["download_url"], root / target / entry["name"], "sha1", entry["sha"], git_blob=True)
    elif name == "mptrj":
        article, file_name, folder = MPTRJ
        files = {f["name"]: f for f in _json(f"https://api.figshare.com/v2/articles/{article}/files")}
        entry = files[file_name]
        fetch(entry["download_url"], root / folder / file_name, "md5", entry["computed_md5"])
    else:
        raise SystemExit(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help=f"any of: {', '.join(DATASETS)}")
    parser.add_argument("--root", type=Path, default=Path("data"), help="where datasets go (default: data/)")
    parser.add_argument("--list", action="store_true", help="list the datasets and exit")
    args = parser.parse_args()
    if args.list or not args.datasets:
        print("\n".join(DATASETS))
        return
    for name in args.datasets:
        download(name, args.root)


if __name__ == "__main__":
    main()
