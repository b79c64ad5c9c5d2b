"""cuequivariance's compiled kernels: a private folder per process, seeded from and published to ours."""

import os
import subprocess
import sys

import pytest

from mlip.nn.tensor_product.cache import publish_new_kernels, seed_private_folder


def test_kernels_are_seeded_into_a_private_folder_and_published_whole(tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir(), private.mkdir()
    (shared / "kernel-a.cubin").write_bytes(b"a" * 10)
    (shared / ".kernel-x.cubin.99.partial").write_bytes(b"half")  # another process's write in flight
    seed_private_folder(shared, private)
    assert sorted(p.name for p in private.iterdir()) == ["kernel-a.cubin"]
    (private / "kernel-b.cubin").write_bytes(b"b" * 20)  # compiled by this process
    assert publish_new_kernels(private, shared) == 1
    assert (shared / "kernel-b.cubin").read_bytes() == b"b" * 20
    assert publish_new_kernels(private, shared) == 0  # nothing new
    assert sorted(p.name for p in shared.iterdir()) == [".kernel-x.cubin.99.partial", "kernel-a.cubin", "kernel-b.cubin"]


@pytest.mark.parametrize("user_folder", [None, "mine"])
def test_a_process_works_in_its_own_folder_unless_the_user_chose_one(tmp_path, user_folder):
    env = dict(os.environ, MLIP_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR", None), env.pop("MLIP_PRIVATE_NVRTC_CACHE_DIR", None)
    if user_folder:
        env["CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR"] = str(tmp_path / user_folder)
        (tmp_path / user_folder).mkdir()
    shared = tmp_path / "cache" / "cueq" / "nvrtc"
    shared.mkdir(parents=True)
    (shared / "old.cubin").write_bytes(b"old")
    # the process compiles one kernel (written where cuequivariance-ops is told to write)
    code = ("import os; from pathlib import Path; from mlip.nn.tensor_product.cache import use_kernel_cache; "
            "use_kernel_cache(); folder = Path(os.environ['CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR']); "
            "print(folder, sorted(p.name for p in folder.iterdir())); (folder / 'new.cubin').write_bytes(b'new'); "
            # a child process (a DDP rank) inherits the environment: its folder must be its own
            "import subprocess, sys; child = subprocess.run([sys.executable, '-c', 'import os; "
            "from mlip.nn.tensor_product.cache import use_kernel_cache; use_kernel_cache(); "
            "print(os.environ[\"CUEQUIVARIANCE_OPS_NVRTC_CACHE_DIR\"])'], capture_output=True, text=True, check=True); "
            "print(child.stdout.strip())")
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    first, child_folder = shown.stdout.strip().splitlines()
    folder, seen = first.split(" ", 1)
    if user_folder:
        assert folder == child_folder == str(tmp_path / user_folder)
        assert not (shared / "new.cubin").exists()
    else:
        assert folder != str(shared) and "old.cubin" in seen  # private, seeded
        assert child_folder not in (folder, str(shared))
        assert (shared / "new.cubin").read_bytes() == b"new"  # published at exit
        assert not os.path.exists(folder)  # and removed
