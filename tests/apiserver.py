"""A real Kubernetes control plane without nodes for tests (the envtest pattern).

`ControlPlane` starts etcd, kube-apiserver and a kube-controller-manager that runs only the
garbage collector and the namespace controller, all on free 127.0.0.1 ports with certificates
it makes (openssl), and installs the project's CRD. No scheduler and no kubelet: tests (and the
kubelet stand-in of tests/integration/kubelet.py) bind Pods and write their status themselves.
Everything lives in one temporary directory; `stop` ends exactly the processes it started.

The Kubernetes binaries are the ones `hack/cluster build` builds from the Go module proxy
(cached under ~/.cache/wasinn/k8s/v<version>/bin); etcd is Debian's `etcd-server`.

    python -m tests.apiserver     start one, print its KUBECONFIG, stop on Ctrl-C
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from .conftest import free_port, pinned_version

REPO = Path(__file__).resolve().parent.parent
CRDS = (REPO / "crds" / "wasinntask.yaml",)
ETCD = "/usr/bin/etcd"
START_TIMEOUT = float(os.environ.get("WASINN_APISERVER_START_TIMEOUT", "300"))
BUILD_TIMEOUT = float(os.environ.get("WASINN_CLUSTER_BUILD_TIMEOUT", "3600"))
SERVICE_CIDR = "10.0.0.0/24"


class MissingError(Exception):
    """A binary the control plane needs is absent (the message names it and how to get it)."""


def k8s_bin_dir() -> Path:
    cache = Path(os.environ.get("WASINN_CACHE") or Path.home() / ".cache" / "wasinn")
    return cache / "k8s" / f"v{pinned_version('K8S_VERSION')}" / "bin"


def find_binaries() -> dict[str, Path]:
    """etcd, kube-apiserver and kube-controller-manager; runs `hack/cluster build` (cached,
    ~25 min the first time) when the Kubernetes ones are missing."""
    etcd = shutil.which("etcd") or ETCD
    if not Path(etcd).is_file():
        raise MissingError("etcd is not installed (Debian package etcd-server)")
    names = ("kube-apiserver", "kube-controller-manager")
    bins = k8s_bin_dir()
    absent = [n for n in names if not (bins / n).is_file()]
    if absent:
        print(f"\n[apiserver] {', '.join(absent)} not in {bins}: running hack/cluster build",
              file=sys.stderr, flush=True)  # fmt: skip
        done = subprocess.run(
            [str(REPO / "hack" / "cluster"), "build"], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
        )  # fmt: skip
        absent = [n for n in names if not (bins / n).is_file()]
        if absent:  # (another build running at the same time may have finished it instead)
            raise MissingError(
                f"{absent[0]} not in {bins}, and `hack/cluster build` failed "
                f"({done.returncode}): {done.stderr.strip()[-1500:]}"
            )
    return {"etcd": Path(etcd), **{n: bins / n for n in names}}


def _dying_with_us(command: list[str]) -> list[str]:
    """`command`, killed by the kernel if the test process dies without stopping it (util-linux
    setpriv's parent-death signal; as is where setpriv is missing)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command


# -- certificates ----------------------------------------------------------------------------


class Pki:
    """A CA and the keys and certificates signed by it, made with the openssl CLI."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            raise MissingError("openssl is not installed (Debian package openssl)")
        self.ca = self.dir / "ca.crt"
        self._run("req", "-x509", "-new", "-nodes", *self._ec("ca.key"), "-out", str(self.ca),
                  "-days", "30", "-subj", "/CN=wasinn-test-ca",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,digitalSignature")  # fmt: skip

    def _ec(self, key: str) -> list[str]:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout",
                str(self.dir / key)]  # fmt: skip

    def _run(self, *args: str) -> None:
        assert self.openssl is not None
        subprocess.run([self.openssl, *args], check=True, capture_output=True, timeout=60)

    def issue(self, name: str, subject: str, usage: str, sans: str = "") -> tuple[Path, Path]:
        """A key and a certificate for `usage` (serverAuth and/or clientAuth)."""
        crt, key, csr, ext = (self.dir / f"{name}.{s}" for s in ("crt", "key", "csr", "ext"))
        self._run("req", "-new", "-nodes", *self._ec(key.name), "-subj", subject, "-out", str(csr))
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature",
                 f"extendedKeyUsage={usage}"]  # fmt: skip
        if sans:
            lines.append(f"subjectAltName={sans}")
        ext.write_text("\n".join(lines) + "\n")
        self._run("x509", "-req", "-in", str(csr), "-CA", str(self.ca),
                  "-CAkey", str(self.dir / "ca.key"), "-CAcreateserial", "-days", "30",
                  "-extfile", str(ext), "-out", str(crt))  # fmt: skip
        return crt, key

    def signing_key(self) -> tuple[Path, Path]:
        """The service-account token signing key pair (private, public)."""
        key, pub = self.dir / "sa.key", self.dir / "sa.pub"
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                  "-out", str(key))  # fmt: skip
        self._run("pkey", "-in", str(key), "-pubout", "-out", str(pub))
        return key, pub


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path) -> Path:
    """A kubeconfig (JSON is YAML) with the certificates embedded."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin",
                                                  "namespace": "default"}}],
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


# -- the control plane -----------------------------------------------------------------------


@dataclass
class Component:
    """One process the control plane started (stopped by its PID, never by name)."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager (GC, namespaces) in `workdir`."""

    def __init__(self, workdir: Path, binaries: dict[str, Path] | None = None) -> None:
        self.dir = workdir
        self.bins = binaries or find_binaries()
        self.components: list[Component] = []
        self.pki = Pki(workdir / "pki")
        self.ca = self.pki.ca
        self.admin = self.pki.issue("admin", "/O=system:masters/CN=wasinn-test-admin",
                                    "clientAuth")  # fmt: skip
        # What the apiserver presents, and what the kubelet stand-in serves Pod logs with.
        self.serving = self.pki.issue("serving", "/CN=127.0.0.1", "serverAuth",
                                      "IP:127.0.0.1,DNS:localhost")  # fmt: skip
        self.sa_key, self.sa_pub = self.pki.signing_key()
        self.etcd_url = ""
        self.port = 0
        self.url = ""
        self.manager_port = 0
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.started_in = 0.0

    # -- lifecycle --

    def start(self) -> None:
        """Start everything and install the CRDs; stops what it started if anything fails."""
        began = time.monotonic()
        try:
            self._launch("etcd", self._etcd_args, "health", self._etcd_ready)
            self._launch("kube-apiserver", self._apiserver_args, "/readyz", self._apiserver_ready)
            write_kubeconfig(self.kubeconfig, self.url, self.ca, *self.admin)
            # The CRDs first: the garbage collector then watches tasks from its start.
            self._install_crds()
            self._launch("kube-controller-manager", self._controller_manager_args, "/healthz",
                         self._controller_manager_ready)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - began

    def stop(self) -> None:
        """Stop the processes this object started, newest first."""
        for component in reversed(self.components):
            component.stop()
        self.components.clear()

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.components]

    def _spawn(self, name: str, args: list[str]) -> Component:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                _dying_with_us([str(self.bins[name]), *args]), stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
            )  # fmt: skip
        component = Component(name, process, log)
        self.components.append(component)
        return component

    def _wait(self, component: Component, what: str, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if component.process.poll() is not None:
                raise RuntimeError(f"{component.name} exited ({component.process.returncode}) "
                                   f"before {what}:\n{component.tail()}")  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError(f"{component.name}: no {what} after {START_TIMEOUT:.0f}s:\n"
                                   f"{component.tail()}")  # fmt: skip
            time.sleep(0.2)

    def _launch(
        self, name: str, args: Callable[[], list[str]], what: str, ready: Callable[[], bool]
    ) -> None:
        """Start `name` with `args()` and wait until `ready()`. Ports are picked free just
        before use; on a shared machine another process can take one in between: then the
        component exits at once and is started again (`args()` picks new ports)."""
        for attempt in range(3):
            component = self._spawn(name, args())
            try:
                self._wait(component, what, ready)
                return
            except RuntimeError:
                if component.process.poll() is None or attempt == 2:
                    raise
                self.components.remove(component)

    def _etcd_args(self) -> list[str]:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        return [
            "--name", "test", "--data-dir", str(self.dir / f"etcd-{client}"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}", "--log-level", "warn",
        ]  # fmt: skip

    def _apiserver_args(self) -> list[str]:
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        (serving_crt, serving_key), (admin_crt, admin_key) = self.serving, self.admin
        return [
            f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1",
            f"--secure-port={self.port}", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",  # no `kubernetes` Service on a loopback IP
            f"--tls-cert-file={serving_crt}", f"--tls-private-key-file={serving_key}",
            f"--client-ca-file={self.ca}", "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.sa_pub}",
            f"--service-account-signing-key-file={self.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            # As envtest: no ServiceAccount controller runs, so no Pod would be admitted.
            "--disable-admission-plugins=ServiceAccount",
            # Pod logs are proxied to the kubelet stand-in's endpoint on the Node's address.
            f"--kubelet-client-certificate={admin_crt}", f"--kubelet-client-key={admin_key}",
            f"--kubelet-certificate-authority={self.ca}",
            "--kubelet-preferred-address-types=InternalIP", "--profiling=false",
        ]  # fmt: skip

    def _controller_manager_args(self) -> list[str]:
        self.manager_port = free_port()
        kubeconfig = str(self.kubeconfig)
        return [
            f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--controllers=garbagecollector,namespace",
            "--bind-address=127.0.0.1", f"--secure-port={self.manager_port}",
            "--leader-elect=false", "--use-service-account-credentials=false",
            "--authentication-skip-lookup=true",  # (no front proxy: nothing to look up)
            "--profiling=false",
            # Debian's etcd 3.4 lacks RequestWatchProgress: no watch-list streams.
            "--feature-gates=WatchListClient=false",
        ]  # fmt: skip

    def _etcd_ready(self) -> bool:
        return _get(f"{self.etcd_url}/health") is not None

    def _apiserver_ready(self) -> bool:
        return _get(f"{self.url}/readyz", self._tls()) == b"ok"

    def _controller_manager_ready(self) -> bool:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # its own cert
        return _get(f"https://127.0.0.1:{self.manager_port}/healthz", context) == b"ok"

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(*map(str, self.admin))
        return context

    def _install_crds(self) -> None:
        """Create the CRDs of `CRDS` and wait until each is Established."""
        apiserver = self.components[-1]
        for path in CRDS:
            for doc in filter(None, yaml.safe_load_all(path.read_text())):
                self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
                name = doc["metadata"]["name"]
                self._wait(apiserver, f"CRD {name} Established", partial(self._established, name))

    def _established(self, name: str) -> bool:
        crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call as admin (JSON in, JSON out); raises HTTPError on an error status."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(req, context=self._tls(), timeout=60) as response:
            return json.loads(response.read())


def _get(url: str, context: ssl.SSLContext | None = None) -> bytes | None:
    """The body of a 200 answer, or None (not up yet, or not ready)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (urllib.error.URLError, OSError):
        return None


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[ControlPlane]:
    """A started control plane in `workdir`, stopped on exit."""
    plane = ControlPlane(workdir)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


def main() -> int:
    """Start a control plane, print how to use it, and stop it on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="wasinn-apiserver-") as tmp:
        try:
            with running(Path(tmp)) as plane:
                print(f"started in {plane.started_in:.1f}s; pids {plane.pids()}")
                print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
                signal.pause()
        except KeyboardInterrupt:
            pass
        except MissingError as e:
            print(f"cannot start: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
