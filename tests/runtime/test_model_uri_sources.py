"""Model sources by URI: fetched from a real OCI registry (Debian's docker-registry) and from
local http and https servers into the content-addressed cache, verified, and seen by the guest
read-only at /models/NAME; every failure leaves nothing in the cache."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from wasinn_operator.api import TaskSpec
from wasinn_operator.api.modelsource import ModelSource
from wasinn_operator.models.remote import ModelFetchError, entry_dir, fetch_source
from wasinn_operator.proplet.sources import prepare_sources
from wasinn_operator.runtime import DirMount, Outcome, RunSpec, Runtime, RuntimeConfig

from ..conftest import free_port
from ..httpfiles import SimpleIndex, serving
from .conftest import wat

pytestmark = pytest.mark.runtime
REGISTRY = "/usr/bin/docker-registry"
LAYER = "application/vnd.oci.image.layer.v1.tar"
EMPTY = b"{}"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real registry (distribution v2) on 127.0.0.1; yields `host:port`."""
    if not os.access(REGISTRY, os.X_OK):
        pytest.skip(f"{REGISTRY} is missing: `make apt` installs the docker-registry package")
    root = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_port()}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog: {level: error}\n"
        f"storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '{address}'}}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=log)
    try:
        for _ in range(200):
            try:
                if requests.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None:
                pytest.fail(f"docker-registry exited: {(root / 'registry.log').read_text()}")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def push(address: str, repository: str, tag: str, files: dict[str, bytes]) -> str:
    """Push `files` as an OCI artifact's layers with plain HTTP PUTs; the manifest's digest."""
    base = f"http://{address}/v2/{repository}"

    def blob(data: bytes) -> dict[str, object]:
        started = requests.post(f"{base}/blobs/uploads/", timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["Location"]
        if location.startswith("/"):
            location = f"http://{address}{location}"
        joiner = "&" if "?" in location else "?"
        done = requests.put(
            f"{location}{joiner}digest={sha(data)}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert done.status_code == 201, done.text
        return {"digest": sha(data), "size": len(data)}

    config = {"mediaType": "application/vnd.oci.empty.v1+json", **blob(EMPTY)}
    layers = [
        {
            "mediaType": LAYER,
            **blob(data),
            "annotations": {"org.opencontainers.image.title": name},
        }
        for name, data in files.items()
    ]
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.wasinn.model.v1",
            "config": config,
            "layers": layers,
        }
    ).encode()
    put = requests.put(
        f"{base}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    return sha(manifest)


def cached(cache: Path) -> list[str]:
    """Everything in the cache's model store (entries and leftovers)."""
    store = cache / "models" / "sha256"
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


@pytest.fixture(scope="module")
def effnet(models_dir: Path) -> dict[str, bytes]:
    root = models_dir / "efficientnet-lite0"
    return {name: (root / name).read_bytes() for name in ("model.xml", "model.bin", "labels.txt")}


def test_oci_artifact_is_fetched_verified_and_cached(
    registry: str, effnet: dict[str, bytes], tmp_path: Path
) -> None:
    digest = push(registry, "models/effnet", "v1", effnet)
    source = ModelSource(name="effnet", uri=f"oci://{registry}/models/effnet:v1", sha256=digest)
    path = fetch_source(source, tmp_path, 64 << 20)
    assert path == entry_dir(tmp_path, digest.removeprefix("sha256:"))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == effnet
    assert not os.access(path / "model.bin", os.W_OK) or os.geteuid() == 0
    assert (path.stat().st_mode & 0o222) == 0  # host-written, then read-only
    # By digest too, and a second fetch finds it in the cache.
    by_digest = ModelSource(name="e", uri=f"oci://{registry}/models/effnet@{digest}", sha256=digest)
    assert fetch_source(by_digest, tmp_path, 64 << 20) == path
    assert cached(tmp_path) == [digest.removeprefix("sha256:")]


def test_oci_failures_cache_nothing(
    registry: str, effnet: dict[str, bytes], tmp_path: Path
) -> None:
    digest = push(registry, "models/small", "v1", {"model.onnx": b"not really onnx"})
    uri = f"oci://{registry}/models/small:v1"
    cases = {
        "digest mismatch": (ModelSource(name="m", uri=uri, sha256=sha(b"other")), 1 << 20),
        "HTTP 404": (
            ModelSource(name="m", uri=f"oci://{registry}/models/none:v1", sha256=digest),
            1 << 20,
        ),
        "over the 4-byte limit": (ModelSource(name="m", uri=uri, sha256=digest), 4),
        "Connection refused": (
            ModelSource(
                name="m", uri=f"oci://127.0.0.1:{free_port()}/models/small:v1", sha256=digest
            ),
            1 << 20,
        ),
    }
    for expected, (source, limit) in cases.items():
        with pytest.raises(ModelFetchError) as info:
            fetch_source(source, tmp_path, limit)
        assert expected in str(info.value), expected
        assert cached(tmp_path) == [], expected
    untitled = push(registry, "models/untitled", "v1", {"": b"x"})
    with pytest.raises(ModelFetchError, match=r"org\.opencontainers\.image\.title"):
        fetch_source(
            ModelSource(name="m", uri=f"oci://{registry}/models/untitled:v1", sha256=untitled),
            tmp_path,
            1 << 20,
        )
    assert cached(tmp_path) == []


@contextmanager
def https(index: SimpleIndex, tmp_path: Path) -> Iterator[SimpleIndex]:
    """`index` served over https with a self-signed certificate the client is told to trust."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    original = ThreadingHTTPServer.server_bind

    def bind(self: ThreadingHTTPServer) -> None:
        original(self)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ThreadingHTTPServer, "server_bind", bind)
        patch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        with serving(index) as served:
            served.url = served.url.replace("http://", "https://")
            yield served


def test_https_and_http_files(effnet: dict[str, bytes], tmp_path: Path) -> None:
    onnx = b"\x08\x07fake onnx bytes"
    with https(SimpleIndex({"model.onnx": onnx}), tmp_path) as server:
        source = ModelSource(name="m", uri=f"{server.url}/files/model.onnx", sha256=sha(onnx))
        path = fetch_source(source, tmp_path / "cache", 1 << 20)
        assert (path / "model.onnx").read_bytes() == onnx
        missing = ModelSource(name="m", uri=f"{server.url}/files/gone.onnx", sha256=sha(b"1"))
        with pytest.raises(ModelFetchError, match="HTTP 404"):
            fetch_source(missing, tmp_path / "cache", 1 << 20)
    with serving(SimpleIndex({"model.onnx": onnx})) as plain:
        uri = f"{plain.url}/files/model.onnx"
        for source, limit, expected in (
            (ModelSource(name="m", uri=uri, sha256=sha(b"x")), 1 << 20, "digest mismatch"),
            (ModelSource(name="m", uri=uri, sha256=sha(onnx)), 8, "over the 8-byte limit"),
        ):
            with pytest.raises(ModelFetchError, match=expected):
                fetch_source(source, tmp_path / "other", limit)
            assert cached(tmp_path / "other") == []


def test_guests_read_cached_models_but_never_the_compiled_caches(tmp_path: Path) -> None:
    engine = Runtime(RuntimeConfig(cache_dir=tmp_path))
    entry = entry_dir(tmp_path, "ab" * 32)
    entry.mkdir(parents=True)
    (tmp_path / "modules").mkdir(exist_ok=True)
    hello = wat("hello")
    assert engine.run(RunSpec(wasm=hello, dirs=[DirMount(entry, "/models/m", True)])).ok
    assert engine.run(RunSpec(wasm=hello, dirs=[DirMount(tmp_path / "models", "/m", True)])).ok
    refused = [
        DirMount(entry, "/models/m", read_only=False),  # the cache is never writable
        DirMount(tmp_path, "/c", read_only=True),  # holds the sealed caches and the key
        DirMount(tmp_path / "modules", "/c", read_only=True),
    ]
    for mount in refused:
        result = engine.run(RunSpec(wasm=hello, dirs=[mount]))
        assert result.outcome is Outcome.ERROR, mount
        assert result.error is not None and "compiled-code cache" in result.error


def proplet(
    task: dict[str, object], models_dir: Path, tmp_path: Path, policy: dict[str, object]
) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "wasinn_operator.cli", "proplet", "run"],
        env={
            **os.environ,
            "WASINN_TASK": json.dumps(task),
            "WASINN_MODELS_DIR": str(models_dir),
            "WASINN_TERMINATION_LOG": str(termination),
            "WASINN_CACHE_DIR": str(tmp_path / "cache"),
            "WASINN_MODEL_CACHE": str(tmp_path / "model-cache"),
            "WASINN_POLICY": json.dumps(policy),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc, json.loads(termination.read_text())


def test_proplet_runs_a_task_on_a_model_from_the_registry(
    registry: str,
    effnet: dict[str, bytes],
    guest_path: Callable[[str], Path],
    models_dir: Path,
    tmp_path: Path,
) -> None:
    digest = push(registry, "models/effnet", "v2", effnet)
    source = {"name": "effnet", "uri": f"oci://{registry}/models/effnet:v2", "sha256": digest}
    chelsea = "/models/efficientnet-lite0/tensors/chelsea.rgb.f32"
    task = {
        "id": "t-src",
        "wasm": {"path": str(guest_path("classify-c"))},
        "modelSources": [source],
        # By name (wasi-nn's load_by_name), then by path: the guest reads the files itself.
        "args": ["--model", "effnet", chelsea],
    }
    # Deny by default: no origin is allowed, so nothing is fetched.
    proc, summary = proplet(task, models_dir, tmp_path, {})
    assert summary["reason"] == "PolicyViolation"
    assert str(summary["error"]).startswith(
        f"modelSources[0].uri: oci://{registry}/models/effnet:v2: origin not allowed "
        "(allowed: none)"
    )
    assert not (tmp_path / "model-cache").exists()
    allowed = {"allowModelOrigins": [f"oci://{registry}/models"]}
    proc, summary = proplet(task, models_dir, tmp_path, allowed)
    assert proc.returncode == 0, proc.stderr
    assert "1. tiger cat (282)" in proc.stdout
    task["args"] = ["--model-dir", "/models/effnet", chelsea]
    proc, summary = proplet(task, models_dir, tmp_path, allowed)
    assert proc.returncode == 0, proc.stderr
    assert "1. tiger cat (282)" in proc.stdout
    assert cached(tmp_path / "model-cache") == [digest.removeprefix("sha256:")]
    # Too big for the policy: a clear error, nothing more cached.
    other = push(registry, "models/effnet", "v3", {**effnet, "notes.txt": b"x"})
    task["modelSources"] = [
        {**source, "uri": f"oci://{registry}/models/effnet:v3", "sha256": other}
    ]
    proc, summary = proplet(task, models_dir, tmp_path, {**allowed, "maxModelBytes": 1 << 20})
    assert summary["reason"] == "FetchFailed"
    assert "over the 1048576-byte limit" in str(summary["error"])
    assert cached(tmp_path / "model-cache") == [digest.removeprefix("sha256:")]


def test_wasinn_run_model_option(
    effnet: dict[str, bytes], guest_path: Callable[[str], Path], models_dir: Path, tmp_path: Path
) -> None:
    labels = effnet["labels.txt"]
    xml, weights = effnet["model.xml"], effnet["model.bin"]
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    with serving(SimpleIndex({"model.xml": xml, "model.bin": weights, "labels.txt": labels})) as s:
        # https/http sources are one file each: three sources make one directory each.
        options = [
            f"--model=xml@{sha(xml)}={s.url}/files/model.xml",
            "--model",
            f"labels@{sha(labels)}={s.url}/files/labels.txt",
        ]
        command = [
            sys.executable, "-m", "wasinn_operator.cli", "run", "--cache-dir", str(tmp_path),
            *options, "--dir", f"{tensors}::/tensors", str(guest_path("classify-c")),
            "--model-dir", "/models/xml", "/tensors/chelsea.rgb.f32",
        ]  # fmt: skip
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        # The IR's weights are not there: the guest fails to read /models/xml/model.bin, which
        # shows /models/xml is the fetched directory.
        assert proc.returncode != 0
        assert "model.bin" in proc.stderr
        assert (entry_dir(tmp_path, sha(xml)[7:]) / "model.xml").read_bytes() == xml
        bad = [*command]
        bad[bad.index(options[0])] = f"--model=xml@{sha(b'x')}={s.url}/files/model.xml"
        proc = subprocess.run(bad, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2
        assert "wasinn run: --model xml: " in proc.stderr and "digest mismatch" in proc.stderr
        pvc = [*command]
        pvc[pvc.index(options[0])] = "--model=x=pvc://claim/dir"
        proc = subprocess.run(pvc, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2
        assert "pvc:// sources work in a cluster only" in proc.stderr


def test_wasinn_run_classifies_with_a_model_from_the_registry(
    registry: str,
    effnet: dict[str, bytes],
    guest_path: Callable[[str], Path],
    tmp_path: Path,
    models_dir: Path,
) -> None:
    digest = push(registry, "models/effnet", "cli", effnet)
    tensors = models_dir / "efficientnet-lite0" / "tensors"
    command = [
        sys.executable, "-m", "wasinn_operator.cli", "run", "--cache-dir", str(tmp_path),
        "--model", f"net@{digest}=oci://{registry}/models/effnet:cli",
        "--dir", f"{tensors}::/tensors", str(guest_path("classify-c")),
        "--model", "net", "/tensors/chelsea.rgb.f32",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "WASINN_MODELS_DIR"}
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "1. tiger cat (282)" in proc.stdout


@contextmanager
def token_gate(upstream: str) -> Iterator[tuple[str, list[str]]]:
    """A registry front that wants a bearer token (the distribution token flow) from its own
    token service, given for user:secret only, and forwards GETs to the real registry."""
    seen: list[str] = []
    token = "t0k3n"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{self.path.split('?')[0]} {self.headers.get('Authorization', '-')}")
            if self.path.startswith("/token"):
                if self.headers.get("Authorization") != "Basic dXNlcjpzZWNyZXQ=":
                    self.send_error(401)
                    return
                self._reply(200, json.dumps({"token": token}).encode(), {})
                return
            if self.headers.get("Authorization") != f"Bearer {token}":
                realm = f"http://{self.headers['Host']}/token"
                challenge = f'Bearer realm="{realm}",service="gate",scope="repository:m:pull"'
                self._reply(401, b"{}", {"WWW-Authenticate": challenge})
                return
            forwarded = requests.get(
                f"http://{upstream}{self.path}",
                headers={"Accept": self.headers.get("Accept", "*/*")},
                timeout=30,
            )
            self._reply(forwarded.status_code, forwarded.content, {})

        def _reply(self, code: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_bearer_token_flow(registry: str, tmp_path: Path) -> None:
    files = {"model.onnx": b"onnx bytes behind a token"}
    digest = push(registry, "models/private", "v1", files)
    with token_gate(registry) as (gate, seen):
        source = ModelSource(name="p", uri=f"oci://{gate}/models/private:v1", sha256=digest)
        with pytest.raises(ModelFetchError, match="token"):
            fetch_source(source, tmp_path, 1 << 20)  # anonymous: the token service says 401
        assert cached(tmp_path) == []
        auth = tmp_path / "config.json"
        auth.write_text(json.dumps({"auths": {gate: {"username": "user", "password": "secret"}}}))
        task = TaskSpec.model_validate(
            {"wasm": {"path": "/a"}, "modelSources": [source.model_dump()]}
        )
        ready = prepare_sources(task, tmp_path, 1 << 20, tmp_path / "pvcs", registry_auth=auth)
        assert (ready["p"] / "model.onnx").read_bytes() == files["model.onnx"]
    assert "/v2/models/private/manifests/v1 Bearer t0k3n" in seen
    assert "/token Basic dXNlcjpzZWNyZXQ=" in seen


def test_pvc_sources_are_the_operators_mounts(models_dir: Path, tmp_path: Path) -> None:
    pvcs = tmp_path / "pvcs"
    (pvcs / "shared").mkdir(parents=True)
    task = TaskSpec.model_validate(
        {"wasm": {"path": "/a"}, "modelSources": [{"name": "shared", "uri": "pvc://team/x"}]}
    )
    assert prepare_sources(task, tmp_path / "cache", 1, pvcs) == {"shared": pvcs / "shared"}
    with pytest.raises(ModelFetchError) as info:
        prepare_sources(task, tmp_path / "cache", 1, tmp_path / "elsewhere")
    assert str(info.value).startswith("modelSources[0] (shared): pvc://team/x: not mounted at ")
    assert "pvc:// sources work in a cluster" in str(info.value)
