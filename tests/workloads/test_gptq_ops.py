"""GPTQModel's CPU extensions prebuilt in the images are copied into its cache (devops_workloads/gptq_ops.py)."""
from __future__ import annotations

import os
import stat

from devops_workloads import gptq_ops


def _prebuilt(root):
    lib = root / "int4_qzero_group_scaled_cpu" / "0123456789abcdef" / "gptqmodel_int4_qzero_group_scaled_cpu.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF library")
    (root / "pack_block_cpu" / "fedcba9876543210").mkdir(parents=True)
    (root / "pack_block_cpu" / "fedcba9876543210" / "gptqmodel_pack_block_cpu.so").write_bytes(b"\x7fELF pack")
    (root / "int4_qzero_group_scaled_cpu.lock").write_text("")  # not a library: not copied
    return lib


def test_the_image_libraries_land_under_gptqmodels_cache_with_their_fingerprint_folders(tmp_path, monkeypatch):
    src = tmp_path / "opt"
    lib = _prebuilt(src)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv(gptq_ops.ENV, str(src))
    copied = gptq_ops.seed_prebuilt_ops()
    cache = tmp_path / "home" / ".cache" / "gptqmodel" / "torch_extensions"
    assert sorted(p.relative_to(cache).as_posix() for p in copied) == [
        "int4_qzero_group_scaled_cpu/0123456789abcdef/gptqmodel_int4_qzero_group_scaled_cpu.so",
        "pack_block_cpu/fedcba9876543210/gptqmodel_pack_block_cpu.so",
    ]
    assert (cache / lib.relative_to(src)).read_bytes() == lib.read_bytes()
    assert not (cache / "int4_qzero_group_scaled_cpu.lock").exists()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    # A second process (or a library GPTQModel built itself) finds them there: nothing is copied again.
    assert gptq_ops.seed_prebuilt_ops() == []


def test_a_cache_the_user_chose_is_seeded_and_nothing_happens_outside_the_images(tmp_path, monkeypatch):
    src = tmp_path / "opt"
    _prebuilt(src)
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv(gptq_ops.ENV, raising=False)
    assert gptq_ops.seed_prebuilt_ops() == []  # not in an image
    monkeypatch.setenv(gptq_ops.ENV, str(tmp_path / "missing"))
    assert gptq_ops.seed_prebuilt_ops() == []
    assert len(gptq_ops.seed_prebuilt_ops(src)) == 2
    assert (tmp_path / "mine" / "pack_block_cpu" / "fedcba9876543210" / "gptqmodel_pack_block_cpu.so").is_file()


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    if os.geteuid() == 0:
        # root writes through the mode bits: make the cache root a file instead
        blocked = tmp_path / "blocked"
        blocked.write_text("")
        cache = blocked / "sub"
    else:
        cache = tmp_path / "ro"
        cache.mkdir()
        cache.chmod(stat.S_IRUSR | stat.S_IXUSR)
    src = tmp_path / "opt"
    _prebuilt(src)
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(cache))
    assert gptq_ops.seed_prebuilt_ops(src) == []
    assert "could not seed GPTQModel's extension cache" in caplog.text


def test_the_cache_root_is_the_one_gptqmodel_reads(tmp_path, monkeypatch):
    """If GPTQModel moved its cache, the seeded libraries would be ignored and every pod would compile again."""
    from devops_workloads.quiet import quiet_gptqmodel

    quiet_gptqmodel()
    from gptqmodel.utils.cpp import _int4_qzero_group_scaled_cpu_extension, default_torch_ops_build_root

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.delenv("GPTQMODEL_EXT_BUILD", raising=False)
    assert default_torch_ops_build_root("int4_qzero_group_scaled_cpu").parent == gptq_ops.gptqmodel_cache_root()
    assert _int4_qzero_group_scaled_cpu_extension().build_root().parent.parent == gptq_ops.gptqmodel_cache_root()
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert default_torch_ops_build_root("x").parent == gptq_ops.gptqmodel_cache_root() == tmp_path / "mine"
