"""The compiled-code caches cannot be poisoned: a tampered entry is discarded, never run."""

from __future__ import annotations

import hashlib
import logging
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import wasmtime

from wasinn_operator.runtime import DirMount, Outcome, RunSpec, Runtime, RuntimeConfig

from .conftest import wat
from .test_fast_paths import context, native, put_tensor, run, session
from .test_nn_abi import OUTPUT, TENSOR, WRITTEN

pytestmark = pytest.mark.runtime


def entry(engine: Runtime, wasm: bytes) -> Path:
    disk = engine.modules.disk
    assert disk is not None
    return disk.path(engine.modules.entry_name(hashlib.sha256(wasm).hexdigest()))


def hello_runs(engine: Runtime) -> None:
    result = engine.run(RunSpec(wasm=wat("hello")))
    assert result.ok, result.error
    assert result.stdout == b"hello from wasm\n"


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


TAMPERS: dict[str, Callable[[Path, Path], None]] = {
    "flipped": lambda hello, _: flip_last_byte(hello),
    "truncated": lambda hello, _: hello.write_bytes(hello.read_bytes()[:-100]),
    "another module's valid entry": lambda hello, other: shutil.copyfile(other, hello),
    "symlink to another module's entry": lambda hello, other: (
        hello.unlink() or hello.symlink_to(other)
    ),
    "unsealed serialized module": lambda hello, _: hello.write_bytes(
        bytes(wasmtime.Module(wasmtime.Engine(), wat("exit7")).serialize())
    ),
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_a_tampered_module_entry_is_discarded_and_recompiled(
    tamper: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path))
    hello_runs(engine)
    assert engine.run(RunSpec(wasm=wat("exit7"))).exit_code == 7
    hello, other = entry(engine, wat("hello")), entry(engine, wat("exit7"))
    TAMPERS[tamper](hello, other)
    fresh = Runtime(RuntimeConfig(cache_dir=tmp_path))  # no copy in memory: reads the disk
    with caplog.at_level(logging.WARNING, "wasinn.cache"):
        result = fresh.run(RunSpec(wasm=wat("hello")))
    assert result.ok and result.stdout == b"hello from wasm\n"  # never exit7's code
    assert not result.module_cached
    assert "discarding" in caplog.text
    # Recompiled and sealed again: the next engine uses it.
    assert not hello.is_symlink()
    again = Runtime(RuntimeConfig(cache_dir=tmp_path)).run(RunSpec(wasm=wat("hello")))
    assert again.ok and again.module_cached


def test_a_verified_digest_keys_the_same_entry_as_the_bytes(tmp_path: Path) -> None:
    # The proplet passes the digest its fetch verified, so the module is not hashed again.
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path))
    hello_runs(engine)
    digest = "sha256:" + hashlib.sha256(wat("hello")).hexdigest()
    fresh = Runtime(RuntimeConfig(cache_dir=tmp_path))
    result = fresh.run(RunSpec(wasm=wat("hello"), verified_digest=digest))
    assert result.ok and result.module_cached  # the entry the bytes' own hash names
    assert result.digest == digest
    assert list((tmp_path / "modules").glob("*.cwasm")) == [entry(engine, wat("hello"))]


def test_the_module_cache_is_bounded(tmp_path: Path) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path))
    for name in ("hello", "exit7", "trap"):
        engine.run(RunSpec(wasm=wat(name)))
    sizes = [p.stat().st_size for p in (tmp_path / "modules").glob("*.cwasm")]
    assert len(sizes) == 3
    bound = sum(sizes) - 1  # one entry too many
    small = Runtime(RuntimeConfig(cache_dir=tmp_path, module_cache_bytes=bound))
    small.run(RunSpec(wasm=wat("spin"), timeout=0.1))  # a fourth entry: two must go
    left = list((tmp_path / "modules").glob("*.cwasm"))
    assert sum(p.stat().st_size for p in left) <= bound
    assert entry(small, wat("spin")) in left  # the newest stays


def test_guests_never_reach_the_cache(tmp_path: Path) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path / "cache"))
    hello_runs(engine)
    for host in (tmp_path / "cache", tmp_path / "cache" / "modules"):
        result = engine.run(RunSpec(wasm=wat("hello"), dirs=[DirMount(host, "/c")]))
        assert result.outcome is Outcome.ERROR
        assert result.error is not None and "compiled-code cache" in result.error
    (tmp_path / "data").mkdir()
    assert engine.run(RunSpec(wasm=wat("hello"), dirs=[DirMount(tmp_path / "data", "/d")])).ok


@pytest.mark.parametrize("tamper", ["flipped", "swapped", "truncated"])
def test_a_tampered_model_blob_is_discarded_and_recompiled(
    tamper: str, tmp_path: Path, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    chelsea = (models_dir / "efficientnet-lite0" / "tensors" / "chelsea.rgb.f32").read_bytes()
    # Two blobs: the named model compiled at f32 and at the default precision.
    for precision in ("f32", None):
        config = RuntimeConfig(cache_dir=tmp_path, inference_precision=precision)
        context(session(Runtime(config), models_dir))
    f32 = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
    blobs = sorted((tmp_path / "openvino").glob("*.blob"), key=lambda p: p.stat().st_mtime_ns)
    assert len(blobs) == 2
    target, other = blobs
    if tamper == "flipped":
        flip_last_byte(target)
    elif tamper == "swapped":
        shutil.copyfile(other, target)  # a valid blob for other settings
    else:
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, "wasinn.cache"):
        s = session(f32, models_dir)
        ctx = context(s)
        put_tensor(s, chelsea)
        got = run(s, ctx)
    assert "discarding" in caplog.text
    np.testing.assert_array_equal(got, native(models_dir, chelsea))


def test_the_model_cache_is_bounded(tmp_path: Path, models_dir: Path) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
    context(session(engine, models_dir))
    (blob,) = (tmp_path / "openvino").glob("*.blob")
    size = blob.stat().st_size
    small = Runtime(RuntimeConfig(cache_dir=tmp_path, model_cache_bytes=size + size // 2))
    context(session(small, models_dir))  # the default precision: a second blob, one must go
    left = list((tmp_path / "openvino").glob("*.blob"))
    assert len(left) == 1 and left != [blob]


def test_variants_and_loaded_bytes_are_cached_sealed(tmp_path: Path, models_dir: Path) -> None:
    chelsea = (models_dir / "efficientnet-lite0" / "tensors" / "chelsea.rgb.f32").read_bytes()
    outputs = []
    for _ in range(2):  # compile and seal, then a new engine imports both blobs
        engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
        s = session(engine, models_dir)
        ctx = context(s)
        put_tensor(s, chelsea * 8, dims=(8, 3, 224, 224))
        assert s.call("nn_set_input", ctx, 0, TENSOR) == 0
        assert s.call("nn_compute", ctx) == 0
        assert s.call("nn_get_output", ctx, 0, OUTPUT, 8 * 4000, WRITTEN) == 0
        outputs.append(s.read(OUTPUT, 8 * 4000))
        blobs = {p: p.stat().st_mtime_ns for p in (tmp_path / "openvino").glob("*.blob")}
        assert len(blobs) == 2  # the model and its batch-8 variant
        if len(outputs) == 1:
            written = blobs
    assert blobs == written  # imported, not rewritten
    assert outputs[0] == outputs[1]


def test_a_graph_loaded_from_bytes_is_imported_and_still_makes_variants(
    tmp_path: Path, models_dir: Path
) -> None:
    model = models_dir / "efficientnet-lite0"
    xml, weights = (model / "model.xml").read_bytes(), (model / "model.bin").read_bytes()
    chelsea = (model / "tensors" / "chelsea.rgb.f32").read_bytes()
    outputs = []
    for batch in (1, 2):  # the second engine imports the graph, then compiles a variant
        engine = Runtime(RuntimeConfig(cache_dir=tmp_path, inference_precision="f32"))
        s = engine.session(RunSpec(wasm=wat("nn_shim"), models_dir=models_dir))
        base = 0x200000
        s.write(base, xml)
        s.write(base + len(xml), weights)
        s.write(0x1000, struct.pack("<4I", base, len(xml), base + len(xml), len(weights)))
        assert s.call("nn_load", 0x1000, 2, 0, 0, 0x200) == 0
        assert s.call("nn_init_execution_context", 0, 0x204) == 0
        put_tensor(s, chelsea * batch, dims=(batch, 3, 224, 224))
        assert s.call("nn_set_input", 0, 0, TENSOR) == 0
        assert s.call("nn_compute", 0) == 0
        assert s.call("nn_get_output", 0, 0, OUTPUT, batch * 4000, WRITTEN) == 0
        outputs.append(s.read(OUTPUT, 4000))
    assert len(list((tmp_path / "openvino").glob("*.blob"))) == 2  # the graph, the variant
    first, second = (np.frombuffer(o, np.float32) for o in outputs)
    np.testing.assert_array_equal(first, native(models_dir, chelsea))
    np.testing.assert_allclose(second, first, rtol=1e-4, atol=1e-4)  # batch 2's first image
