"""The download helper's verification and atomic rename, on local file:// URLs (no network)."""

import hashlib
import importlib.util
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "download_data.py"
spec = importlib.util.spec_from_file_location("download_data", SCRIPT)
download_data = importlib.util.module_from_spec(spec)
spec.loader.exec_module(download_data)


def test_verified_download_lands_and_a_wrong_checksum_leaves_nothing(tmp_path):
    source = tmp_path / "published.xyz"
    source.write_bytes(b"1\nProperties=species:S:1:pos:R:3\nH 0 0 0\n")
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    target = tmp_path / "data" / "file.xyz"
    download_data.fetch(source.as_uri(), target, "md5", md5)
    assert target.read_bytes() == source.read_bytes()
    with pytest.raises(SystemExit, match="differs from the published"):
        download_data.fetch(source.as_uri(), tmp_path / "data" / "bad.xyz", "md5", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["file.xyz"]


def test_git_blob_hash_matches_git(tmp_path):
    path = tmp_path / "blob.txt"
    path.write_text("3BPA\n")
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert download_data._hash(path, "sha1", git_blob=True) == expected


def test_every_dataset_has_a_source():
    assert {"3bpa", "mptrj", "oc20_s2ef_200k", "oc22_s2ef"} <= set(download_data.DATASETS)
    assert all(len(md5) == 32 for _, md5, _ in download_data.FAIRCHEM_ARCHIVES.values())
