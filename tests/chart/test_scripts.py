"""deploy/kind-*.sh run against fake kubectl, kind, docker, helm, curl and sleep (fake_tool.py)
that record their arguments and replay answers written after the real tools' documented output
(kubectl jsonpath, `consul kv get -detailed`, `kind get clusters`, `docker image inspect -f`,
helm's release summary). The e2e's assertions (one ready endpoint = the lock holder, failover
timing, the producer still acknowledged) are exercised on passing and failing recordings, and
kind-up's image load and Helm values are checked, down to the rendered pods.

PATH holds only the fakes and links to the few system tools the scripts use, so a real kubectl
or docker on the machine can never be reached."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import helm_python as helm
import pytest

from conftest import CHART, ROOT, container, find, parse, render_as

FAKES = ["kubectl", "kind", "docker", "helm", "curl", "sleep"]
# What the scripts need from the system, besides bash's builtins.
SYSTEM_TOOLS = ["bash", "sh", "env", "dirname", "grep", "awk", "sed", "sort", "wc", "paste", "cut", "seq", "date",
                "mktemp", "rm", "cat", "head", "perl", "base64"]
# The write token the recorded cluster's Secret holds (node.auth.apiToken, generated).
API_TOKEN = "Zq8rT2mWb5XkP0vNc7JyH4sLd1GfA9Ue"
# The producer's Consul ACL token in the recorded ACL Secret (consul.acl, a uuidv4).
CONSUL_TOKEN = "3f0c2a7e-9b1d-4c5e-8a6f-2d7b9e1c4a30"
IMAGE_ID = "sha256:5f0b6c8e1d3a47c2b9e6f81a0d4c7e2b93a58f1c6d0e7b24a9c3f5e8d1b6a72c"


@dataclass
class Run:
    """One script run: exit code, output and the recorded tool calls."""

    rc: int
    stdout: str
    stderr: str
    calls: list[dict]

    def of(self, tool: str) -> list[list[str]]:
        return [c["args"] for c in self.calls if c["tool"] == tool]

    def joined(self, tool: str) -> list[str]:
        return [" ".join(a) for a in self.of(tool)]

    @property
    def unanswered(self) -> list[str]:
        return [f"{c['tool']} {' '.join(c['args'])}" for c in self.calls if c["rule"] is None]


class Harness:
    """A PATH of fakes and a scenario for them."""

    def __init__(self, tmp: Path, fakes=FAKES, system_tools=SYSTEM_TOOLS, extra_bin: dict[str, str] | None = None):
        self.dir = tmp / "fake"
        self.bin = tmp / "bin"
        self.dir.mkdir()
        self.bin.mkdir()
        fake = Path(__file__).resolve().parent / "fake_tool.py"
        for tool in fakes:
            path = self.bin / tool
            path.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{fake}' {tool} \"$@\"\n")
            path.chmod(0o755)
        for tool in system_tools:
            real = shutil.which(tool)
            if real:
                (self.bin / tool).symlink_to(real)
        for name, text in (extra_bin or {}).items():
            (self.bin / name).unlink(missing_ok=True)
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)

    def run(self, script: str, rules: list[dict], env: dict[str, str] | None = None, timeout: float = 60) -> Run:
        (self.dir / "scenario.json").write_text(json.dumps({"rules": rules}))
        for leftover in ("state.json", "calls.jsonl"):
            (self.dir / leftover).unlink(missing_ok=True)
        full_env = {"PATH": str(self.bin), "FAKE_DIR": str(self.dir), "HOME": str(self.dir), "TMPDIR": str(self.dir),
                    "LC_ALL": "C", **(env or {})}
        proc = subprocess.Popen([str(self.bin / "bash"), str(ROOT / script)], cwd=ROOT, env=full_env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        calls_path = self.dir / "calls.jsonl"
        calls = [json.loads(l) for l in calls_path.read_text().splitlines()] if calls_path.exists() else []
        return Run(proc.returncode, out, err, calls)


@pytest.fixture
def harness(tmp_path):
    return Harness(tmp_path)


def rule(tool, match="", *answers, when=None):
    r = {"tool": tool, "match": match, "answers": list(answers) or [{}]}
    if when:
        r["when"] = when
    return r


def out(text="", rc=0, **kw):
    return {"stdout": text, "rc": rc, **kw}


def err(text, rc=1, **kw):
    return {"stderr": text, "rc": rc, **kw}


def fullname(release: str) -> str:
    name = release if "simpleloggers" in release else f"{release}-simpleloggers"
    return name[:63].removesuffix("-")


# --- recorded answers ---------------------------------------------------------------------------

def pods_ready(release: str, ready: int | None, n: int = 3) -> str:
    """`kubectl get pods -o jsonpath='{range .items[*]}{.metadata.name}{" "}{...Ready...status}{"\\n"}{end}'`."""
    return "".join(f"{fullname(release)}-{i} {'True' if i == ready else 'False'}\n" for i in range(n))


def endpoints(release: str, ready: set[int], n: int = 3) -> str:
    """`kubectl get endpointslices -o jsonpath='{range .items[*].endpoints[*]}{.targetRef.name}{" "}{.conditions.ready}{"\\n"}{end}'`:
    not-ready pods are listed too, with ready=false."""
    return "".join(f"{fullname(release)}-{i} {'true' if i in ready else 'false'}\n" for i in range(n))


def kv_detailed(holder: str | None, address: str = "10.244.1.7:3000") -> str:
    """`consul kv get -detailed <key>`: a tabwriter table; Session is `-` when no session holds
    the key. The value is the leader record the node writes."""
    value = json.dumps({"name": holder or "gone", "address": address, "since": "2026-01-12T10:05:02.118Z"},
                       separators=(",", ":"))
    session = "5c1f0cc5-7d5f-3a59-7ac4-6d2a6b5a8d9e" if holder else "-"
    return ("CreateIndex      23\nFlags            3304740253564472344\nKey              service/simpleloggers/leader\n"
            f"LockIndex        1\nModifyIndex      41\nSession          {session}\nValue            {value}\n")


def status(name: str, offset: int) -> str:
    """GET /api/v1/status of the leader (src/node/probes.rs::Status), compact JSON."""
    return json.dumps({"name": name, "address": "10.244.1.7:3000", "role": "leader", "ready": True,
                       "leader": {"name": name, "address": "10.244.1.7:3000", "since": "2026-01-12T10:05:02.118Z"},
                       "term": 2, "lease_remaining_ms": 1480, "reason": "holds the lock", "role_since": "2026-01-12T10:05:02.118Z",
                       "transitions": 1, "log_end_offset": offset, "log_start_offset": 0, "consul_reachable": True,
                       "session": "5c1f0cc5-7d5f-3a59-7ac4-6d2a6b5a8d9e"}, separators=(",", ":"))


HELM_INSTALLED = """Release "{r}" does not exist. Installing it now.
NAME: {r}
LAST DEPLOYED: Mon Jan 12 10:04:31 2026
NAMESPACE: simpleloggers
STATUS: deployed
REVISION: 1
TEST SUITE: None
NOTES:
simpleloggers 0.1.0 is installed as {f} in namespace simpleloggers.
"""

HELM_TEST_PASSED = """NAME: {r}
LAST DEPLOYED: Mon Jan 12 10:04:31 2026
NAMESPACE: simpleloggers
STATUS: deployed
REVISION: 1
TEST SUITE:     {f}-test
Last Started:   Mon Jan 12 10:09:12 2026
Last Completed: Mon Jan 12 10:09:14 2026
Phase:          Succeeded

POD LOGS: {f}-test
readyz: 200
status: {{"name":"{f}-1","role":"leader"}}
the Service routes to the leader
"""

KIND_CREATE = """Creating cluster "simpleloggers" ...
 \u2713 Ensuring node image (kindest/node:v1.34.0) \U0001f5bc
 \u2713 Preparing nodes \U0001f4e6 \U0001f4e6 \U0001f4e6 \U0001f4e6
 \u2713 Writing configuration \U0001f4dc
 \u2713 Starting control-plane \U0001f579\ufe0f
 \u2713 Installing CNI \U0001f50c
 \u2713 Installing StorageClass \U0001f4be
 \u2713 Joining worker nodes \U0001f69c
Set kubectl context to "kind-simpleloggers"
"""

PODS_WIDE = """NAME                                READY   STATUS    RESTARTS   AGE   IP            NODE
simpleloggers-0                     1/2     Running   0          5m    10.244.1.7    simpleloggers-worker
simpleloggers-consul-server-0       1/1     Running   0          5m    10.244.2.4    simpleloggers-worker2
"""


def secret_jsonpath(encoded: str) -> dict:
    """`kubectl get secret NAME --ignore-not-found -o jsonpath={.data.KEY}`: the base64 value,
    without a newline; nothing (exit 0) when there is no such Secret."""
    return out(encoded)


def e2e_rules(release="simpleloggers", *, endpoints_start=None, holder_start="0", failover_endpoints=None,
              post=None, offsets=(4, 29), restarts="0", helm_test=None, api_token=API_TOKEN, read_token=None,
              token_secret=None, consul_token=CONSUL_TOKEN):
    """A passing kind-e2e recording, with the answers a failing test swaps in."""
    f = fullname(release)
    tokens = f[:48].removesuffix("-")
    consul = f[:49].removesuffix("-") + "-consul-server"
    ns = "--context kind-simpleloggers --namespace simpleloggers"
    node_sel = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=node"
    holder_start = None if holder_start is None else f"{f}-{holder_start}"
    b64 = lambda s: base64.b64encode(s.encode()).decode() if s else ""  # noqa: E731
    return [
        rule("kubectl", re.escape(f"{ns} get secret {tokens}-api-token --ignore-not-found -o jsonpath={{.data.api-token}}"),
             token_secret or secret_jsonpath(b64(api_token))),
        rule("kubectl", re.escape(f"{ns} get secret {tokens}-read-token --ignore-not-found -o jsonpath={{.data.read-token}}"),
             secret_jsonpath(b64(read_token))),
        rule("kubectl", re.escape(f"{ns} get pods -l {node_sel} -o jsonpath="), out(pods_ready(release, 0)), when="start"),
        rule("kubectl", re.escape(f"{ns} get pods -l {node_sel} -o jsonpath="), out(pods_ready(release, 1)), when="failover"),
        rule("kubectl", re.escape(f"{ns} get endpointslices -l kubernetes.io/service-name={f} -o jsonpath="),
             out(endpoints_start or endpoints(release, {0})), when="start"),
        rule("kubectl", re.escape(f"{ns} get endpointslices -l kubernetes.io/service-name={f} -o jsonpath="),
             *(failover_endpoints or [out(endpoints(release, set())), out(endpoints(release, set())),
                                      out(endpoints(release, {1}))]), when="failover"),
        rule("kubectl", re.escape(f"{ns} get secret {consul}-acl --ignore-not-found -o jsonpath={{.data.producer-token}}"),
             secret_jsonpath(b64(consul_token))),
        rule("kubectl", re.escape(f"{ns} exec -i statefulset/{consul} -c consul -- sh -c ") + ".*" +
             re.escape(" lock_holder service/simpleloggers/leader"), out(kv_detailed(holder_start)), when="start"),
        rule("kubectl", re.escape(f"{ns} exec -i statefulset/{consul} -c consul -- sh -c ") + ".*" +
             re.escape(" lock_holder service/simpleloggers/leader"), out(kv_detailed(f"{f}-1", "10.244.3.9:3000")),
             when="failover"),
        rule("kubectl", re.escape(f"{ns} port-forward svc/{f} 13000:3000"),
             out("Forwarding from 127.0.0.1:13000 -> 3000\n", block=30)),
        rule("kubectl", re.escape(f"{ns} delete pod {f}-0 --wait=false"), out(f'pod "{f}-0" deleted\n', phase="failover")),
        rule("kubectl", re.escape(f"{ns} get pods -l app.kubernetes.io/instance={release},app.kubernetes.io/component=producer -o jsonpath="),
             out(restarts)),
        rule("curl", re.escape("http://127.0.0.1:13000/healthz"), out(json.dumps({"status": "ok", "name": f"{f}-0", "log_end_offset": 120}))),
        rule("curl", r"-X POST --data e2e \d+ " + re.escape("http://127.0.0.1:13000/api/v1/log"),
             post or out('{"offset":120,"term":1}')),
        rule("curl", re.escape("http://localhost:3000/api/v1/status"), out(status(f"{f}-0", 121)), when="start"),
        rule("curl", re.escape("http://localhost:3000/api/v1/status"), *(out(status(f"{f}-1", o)) for o in offsets),
             when="failover"),
        rule("helm", re.escape(f"test {release} --kube-context kind-simpleloggers --namespace simpleloggers --logs"),
             helm_test or out(HELM_TEST_PASSED.format(r=release, f=f))),
        rule("sleep"),
    ]


# --- kind-e2e -----------------------------------------------------------------------------------

def test_e2e_passes_on_a_healthy_recording(harness):
    """Leader = single endpoint = lock holder, a write through port-forward, the leader deleted
    and the new single endpoint timed, offsets growing, no producer restart, helm test: PASS."""
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    assert r.unanswered == []
    lines = r.stdout.splitlines()
    assert lines[0] == "1. ok: the Service's only ready endpoint is the lock holder simpleloggers-0"
    assert lines[1] == '2. ok: message acknowledged through port-forward: {"offset":120,"term":1}'
    m = re.fullmatch(r"3\. ok: failover simpleloggers-0 -> simpleloggers-1: the single ready endpoint is the new leader after (\d+) ms", lines[2])
    assert m and int(m.group(1)) < 20000
    assert lines[3] == "4. ok: the producer's messages are still acknowledged (log end offset 4 -> 29)"
    assert lines[-2:] == ["5. ok: helm test passed", "PASS"]
    assert r.joined("kubectl").count("--context kind-simpleloggers --namespace simpleloggers delete pod simpleloggers-0 --wait=false") == 1
    assert r.of("helm") == [["test", "simpleloggers", "--kube-context", "kind-simpleloggers", "--namespace", "simpleloggers", "--logs"]]


@pytest.mark.parametrize(
    "variation, message",
    [
        ({"endpoints_start": "simpleloggers-0 true\nsimpleloggers-1 true\nsimpleloggers-2 false\n"},
         "the Service's ready endpoints (simpleloggers-0,simpleloggers-1) are not exactly the lock holder (simpleloggers-0)"),
        ({"holder_start": "2"}, "are not exactly the lock holder (simpleloggers-2)"),
        ({"holder_start": None}, "are not exactly the lock holder ()"),
        ({"post": err("curl: (22) The requested URL returned error: 503\n", rc=22)}, "POST through port-forward failed"),
        ({"failover_endpoints": [out("simpleloggers-0 false\nsimpleloggers-1 false\nsimpleloggers-2 false\n")]},
         "no new single leader endpoint after"),
        ({"failover_endpoints": [out("simpleloggers-0 false\nsimpleloggers-1 true\nsimpleloggers-2 true\n")]},
         "no new single leader endpoint after"),
        ({"offsets": (29, 29)}, "the new leader's log end offset did not grow (29 -> 29)"),
        ({"restarts": "1"}, "the producer restarted (1)"),
    ],
    ids=["two-ready-endpoints", "endpoint-is-not-holder", "lock-not-held", "post-fails", "no-new-leader",
         "two-new-endpoints", "producer-stalled", "producer-restarted"],
)
def test_e2e_fails_on_a_broken_recording(harness, variation, message):
    """Each e2e assertion fails the run with its own message when the cluster's answers break it.
    Only the recordings without a new leader wait for the failover limit, so only they get a
    short one; the others keep a generous limit, as a loaded machine may take seconds to replay
    the (healthy) failover and must not fail them on the wrong assertion."""
    limit = "1500" if message.startswith("no new single leader") else "20000"
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(**variation), env={"FAILOVER_LIMIT_MS": limit})
    assert r.rc == 1, r.stdout
    assert f"FAIL: {message}" in r.stderr if message.startswith("the") else message in r.stderr, r.stderr
    assert "PASS" not in r.stdout
    assert r.unanswered == []


def _curl_headers(r: Run, url: str) -> list[str]:
    """The header files each curl call to `url` sent with -H @FILE (their content, as recorded)."""
    calls = [c for c in r.calls if c["tool"] == "curl" and url in c["args"]]
    assert calls, f"no curl call to {url}"
    sent = []
    for c in calls:
        files = [a for a in c["args"] if a.startswith("@")]
        sent.append("".join(c["files"].get(a, "<missing file>") for a in files))
    return sent


def test_e2e_writes_with_the_token_from_the_secret(harness):
    """The write through port-forward carries the write token read from the chart's Secret, in
    a header file (the token is in no command line); reads carry none while the read token is
    off; the header files are gone after the run."""
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    assert _curl_headers(r, "http://127.0.0.1:13000/api/v1/log") == [f"Authorization: Bearer {API_TOKEN}\n"]
    assert set(_curl_headers(r, "http://localhost:3000/api/v1/status")) == {""}
    assert not [c for c in r.calls if any(API_TOKEN in a for a in c["args"])]
    assert not list((harness.dir).glob("simpleloggers-e2e.*")), "header files are removed on exit"


def _stdin_of_kubectl_exec(tmp_path: Path, rules: list[dict]) -> list[str]:
    """Runs the e2e with a kubectl wrapper that also records what `kubectl exec -i` reads on
    stdin (the fake tool ignores stdin), and returns those inputs."""
    log = tmp_path / "stdin.log"
    fake = Path(__file__).resolve().parent / "fake_tool.py"
    wrapper = (f"#!/bin/sh\ncase \" $* \" in *' exec -i '*) cat >>'{log}'; echo >>'{log}' ;; esac\n"
               f"exec '{sys.executable}' '{fake}' kubectl \"$@\"\n")
    h = Harness(tmp_path, extra_bin={"kubectl": wrapper})
    r = h.run("deploy/kind-e2e.sh", rules, env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    return log.read_text().splitlines()


def test_e2e_reads_the_lock_with_the_producer_consul_token(tmp_path):
    """With the chart's Consul ACLs the lock holder is read with the producer's token (read on
    the election key only), from the ACL Secret, passed on stdin: on no command line."""
    inputs = _stdin_of_kubectl_exec(tmp_path, e2e_rules())
    assert inputs and set(inputs) == {CONSUL_TOKEN}
    calls = [json.loads(line) for line in (tmp_path / "fake" / "calls.jsonl").read_text().splitlines()]
    assert not [c for c in calls if any(CONSUL_TOKEN in a for a in c["args"])]
    execs = [c["args"] for c in calls if "exec" in c["args"]]
    assert all('CONSUL_HTTP_TOKEN="$(cat)"' in " ".join(a) for a in execs)


def test_e2e_reads_the_lock_anonymously_without_acls(tmp_path):
    """ACLs off: no ACL Secret, so the CLI gets an empty token (anonymous) and the run passes."""
    assert set(_stdin_of_kubectl_exec(tmp_path, e2e_rules(consul_token=None))) == {""}


def test_e2e_reads_with_the_read_token_when_on(harness):
    """With the read token's Secret present, every status read sends it; the write still sends
    the write token."""
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(read_token="r" * 32), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    assert set(_curl_headers(r, "http://localhost:3000/api/v1/status")) == {f"Authorization: Bearer {'r' * 32}\n"}
    assert _curl_headers(r, "http://127.0.0.1:13000/api/v1/log") == [f"Authorization: Bearer {API_TOKEN}\n"]


def test_e2e_without_tokens_sends_none(harness):
    """node.auth.apiToken off: no Secret, so the write goes without a header and still passes."""
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(api_token=None), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    assert _curl_headers(r, "http://127.0.0.1:13000/api/v1/log") == [""]


def test_e2e_fails_when_the_secret_cannot_be_read(harness):
    """A kubectl that cannot read Secrets (RBAC) fails the run naming the Secret, before any write."""
    denied = err('Error from server (Forbidden): secrets "simpleloggers-api-token" is forbidden\n')
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(token_secret=denied))
    assert r.rc == 1 and "FAIL: cannot read the Secret simpleloggers-api-token" in r.stderr
    assert r.of("curl") == []


def test_e2e_fails_when_helm_test_fails(harness):
    """A failed `helm test` fails the run (no PASS)."""
    failed = err("Error: 1 error occurred:\n\t* pod simpleloggers-test failed\n")
    r = harness.run("deploy/kind-e2e.sh", e2e_rules(helm_test=failed), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 1 and "PASS" not in r.stdout and "pod simpleloggers-test failed" in r.stderr


def test_e2e_with_another_release_name(harness):
    """RELEASE=demo: the Service, the Consul StatefulSet and the pods carry the chart's full name
    demo-simpleloggers (the recording answers only those names)."""
    r = harness.run("deploy/kind-e2e.sh", e2e_rules("demo"), env={"RELEASE": "demo", "FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr + "\n".join(r.unanswered)
    assert "failover demo-simpleloggers-0 -> demo-simpleloggers-1" in r.stdout


def test_e2e_timing_works_with_bsd_date(tmp_path):
    """The failover clock does not depend on GNU date's %N: with a BSD-like date (prints a
    literal N) the run still times the failover."""
    real = shutil.which("date")
    bsd_date = f"#!/bin/sh\nfmt=$(printf '%s' \"$1\" | sed 's/%N/N/g')\nexec '{real}' \"$fmt\"\n"
    h = Harness(tmp_path, extra_bin={"date": bsd_date})
    r = h.run("deploy/kind-e2e.sh", e2e_rules(), env={"FAILOVER_LIMIT_MS": "20000"})
    assert r.rc == 0, r.stderr
    assert re.search(r"new leader after \d+ ms", r.stdout)


# --- kind-up ------------------------------------------------------------------------------------

def up_rules(release="simpleloggers", *, cluster_exists=False, docker_up=True, platform_flag=True, helm_result=None,
             ready=0):
    f = fullname(release)
    node_sel = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=node"
    ns = "--context kind-simpleloggers --namespace simpleloggers"
    rules = [
        rule("docker", "^info$", out("Client: Docker Engine - Community\n Version:    28.3.3\n") if docker_up else
             err("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n")),
        rule("kind", "^get clusters$", out("simpleloggers\n") if cluster_exists else err("No kind clusters found.\n", rc=0)),
        rule("kind", re.escape("create cluster --name simpleloggers --config kind-config.yaml"), err(KIND_CREATE, rc=0)),
        rule("kubectl", re.escape("--context kind-simpleloggers apply --server-side -f charts/simpleloggers/crds/"),
             out("customresourcedefinition.apiextensions.k8s.io/logclusters.simpleloggers.io serverside-applied\n")),
        rule("docker", re.escape("build -f deploy/Dockerfile -t simpleloggers:dev ."),
             err("#0 building with \"default\" instance using docker driver\n#12 naming to docker.io/library/simpleloggers:dev done\n", rc=0)),
        rule("docker", re.escape("image inspect -f {{.Os}}/{{.Architecture}} simpleloggers:dev"), out("linux/amd64\n")),
        rule("docker", re.escape("image inspect -f {{.Id}} simpleloggers:dev"), out(IMAGE_ID + "\n")),
        rule("docker", r"^save --platform linux/amd64 -o \S+ simpleloggers:dev$",
             {"write_file_after": "-o", "file_content": "single-platform archive"} if platform_flag else
             err("unknown flag: --platform\nSee 'docker save --help'.\n", rc=125)),
        rule("docker", r"^save -o \S+ simpleloggers:dev$", {"write_file_after": "-o", "file_content": "classic archive"}),
        rule("kind", r"^load image-archive \S+ --name simpleloggers$"),
        rule("helm", "^upgrade --install ", helm_result or out(HELM_INSTALLED.format(r=release, f=f))),
        rule("kubectl", re.escape(f"{ns} get pods -l {node_sel} -o jsonpath="), out(pods_ready(release, ready))),
        rule("kubectl", re.escape(f"{ns} get pods -o wide"), out(PODS_WIDE)),
        rule("kubectl", re.escape(f"{ns} get pods -L simpleloggers.io/role"), out(PODS_WIDE)),
        rule("sleep"),
    ]
    return rules


def _helm_values(args: list[str]) -> tuple[str, dict]:
    """The release name and the values `helm upgrade --install` args amount to, merged as Helm
    does (-f files, then --set, then --set-string), parsed with Helm's own strvals parser."""
    assert args[:2] == ["upgrade", "--install"]
    release = args[2]
    files, sets, set_strings = [], [], []
    i = 4
    while i < len(args):
        a = args[i]
        if a in ("-f", "--values"):
            files.append(args[i + 1]); i += 2
        elif a == "--set":
            sets.append(args[i + 1]); i += 2
        elif a == "--set-string":
            set_strings.append(args[i + 1]); i += 2
        else:
            i += 1

    def merge(dst, src):
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
        return dst

    values: dict = {}
    for f in files:
        merge(values, helm.values_from_yaml((ROOT / f).read_text()))
    for s in sets:
        merge(values, helm.parse_set_string(s))
    for s in set_strings:
        merge(values, helm.parse_set_string_values(s))
    return release, values


def test_up_creates_loads_installs_and_waits(harness):
    """A fresh machine: the cluster is created from kind-config.yaml, the image is built, saved
    for its one platform and loaded with `kind load image-archive` (never `kind load
    docker-image`), the chart installed with --wait, then one Ready node awaited."""
    r = harness.run("deploy/kind-up.sh", up_rules())
    assert r.rc == 0, r.stderr
    assert r.unanswered == []
    kind = r.joined("kind")
    assert "create cluster --name simpleloggers --config kind-config.yaml" in kind
    assert not [k for k in kind if "docker-image" in k]
    docker = r.joined("docker")
    assert docker.index("build -f deploy/Dockerfile -t simpleloggers:dev .") < next(
        i for i, d in enumerate(docker) if d.startswith("save "))
    (save,) = [a for a in r.of("docker") if a[0] == "save"]
    archive = save[save.index("-o") + 1]
    (load,) = [c for c in r.calls if c["tool"] == "kind" and c["args"][:2] == ["load", "image-archive"]]
    assert load["args"][2] == archive and load["files"] == {archive: "single-platform archive"}
    assert not Path(archive).exists(), "the archive is removed on exit"
    (upgrade,) = r.of("helm")
    assert "--wait" in upgrade and upgrade[upgrade.index("--timeout") + 1] == "300s"
    assert upgrade[upgrade.index("--kube-context") + 1] == "kind-simpleloggers"
    assert "ready: exactly one node pod is Ready, the leader: simpleloggers-0" in r.stdout


def test_up_restarts_nodes_and_producer_on_a_new_image(harness):
    """The image id kind-up passes lands in both the node and the producer pod templates (as
    Helm parses the --set flags), so a rebuilt image with the same tag rolls both."""
    r = harness.run("deploy/kind-up.sh", up_rules())
    assert r.rc == 0, r.stderr
    release, values = _helm_values(r.of("helm")[0])
    objects = parse(render_as(values, release))
    f = fullname(release)
    node = find(objects, "StatefulSet", f)["spec"]["template"]
    producer = find(objects, "Deployment", f"{f}-producer")["spec"]["template"]
    want = IMAGE_ID.removeprefix("sha256:")
    assert node["metadata"]["annotations"]["simpleloggers.io/image-id"] == want
    assert producer["metadata"]["annotations"]["simpleloggers.io/image-id"] == want
    assert container(node["spec"], "node")["image"] == "simpleloggers:dev"


def test_up_keeps_an_existing_cluster_and_old_docker(harness):
    """An existing cluster is reused; a Docker without `save --platform` (before 28, classic
    store only) falls back to a plain save, which still loads as an archive."""
    r = harness.run("deploy/kind-up.sh", up_rules(cluster_exists=True, platform_flag=False))
    assert r.rc == 0, r.stderr
    assert not [k for k in r.joined("kind") if k.startswith("create")]
    (load,) = [c for c in r.calls if c["tool"] == "kind" and c["args"][0] == "load"]
    assert list(load["files"].values()) == ["classic archive"]


def test_up_with_another_release_name(harness):
    """RELEASE=logs installs release `logs` and waits on its pods, logs-simpleloggers-N."""
    r = harness.run("deploy/kind-up.sh", up_rules("logs"), env={"RELEASE": "logs"})
    assert r.rc == 0, r.stderr + "\n".join(r.unanswered)
    assert r.of("helm")[0][2] == "logs"
    assert "the leader: logs-simpleloggers-0" in r.stdout


def test_up_names_missing_tools(tmp_path):
    """Without kind and helm it stops at once, naming both."""
    h = Harness(tmp_path, fakes=["kubectl", "docker", "curl", "sleep"])
    r = h.run("deploy/kind-up.sh", up_rules())
    assert r.rc == 1
    assert "missing tools: kind helm" in r.stderr
    assert r.calls == []


def test_up_stops_when_the_docker_daemon_is_down(harness):
    r = harness.run("deploy/kind-up.sh", up_rules(docker_up=False))
    assert r.rc == 1 and "daemon does not answer" in r.stderr
    assert r.of("kind") == []


def test_up_stops_when_helm_fails(harness):
    """A failed `helm upgrade --install --wait` (e.g. Consul never Ready) fails the run before
    any pod wait."""
    r = harness.run("deploy/kind-up.sh", up_rules(helm_result=err("Error: UPGRADE FAILED: context deadline exceeded\n")))
    assert r.rc == 1 and "context deadline exceeded" in r.stderr
    assert not [k for k in r.joined("kubectl") if " get pods " in k]


def test_up_times_out_without_a_leader(harness):
    """No node pod ever Ready: the wait gives up after TIMEOUT seconds and shows the pods."""
    r = harness.run("deploy/kind-up.sh", up_rules(ready=None), env={"TIMEOUT": "1"}, timeout=30)
    assert r.rc == 1
    assert "timed out after 1 s waiting for exactly one Ready node pod" in r.stderr
    assert "simpleloggers-consul-server-0" in r.stderr


# --- kind-down ----------------------------------------------------------------------------------

def test_down_deletes_only_an_existing_cluster(harness):
    r = harness.run("deploy/kind-down.sh", [rule("kind", "^get clusters$", out("other\nsimpleloggers\n")),
                                            rule("kind", "^delete cluster --name simpleloggers$",
                                                 err('Deleting cluster "simpleloggers" ...\n', rc=0))])
    assert r.rc == 0 and r.of("kind")[-1] == ["delete", "cluster", "--name", "simpleloggers"]
    r = harness.run("deploy/kind-down.sh", [rule("kind", "^get clusters$", err("No kind clusters found.\n", rc=0))])
    assert r.rc == 0 and "no kind cluster named simpleloggers" in r.stdout
    assert [a for a in r.of("kind") if a[0] == "delete"] == []


# --- kind-common.sh -----------------------------------------------------------------------------

def _common(expr: str, path: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run([shutil.which("bash"), "-c", f"source deploy/kind-common.sh; {expr}"], cwd=ROOT,
                         env={"PATH": path, **(env or {})}, capture_output=True, text=True, check=True)
    return run.stdout.strip()


@pytest.mark.parametrize("release", ["simpleloggers", "demo", "eu-simpleloggers-prod", "a" * 53, "a" * 48 + "-b"])
def test_common_names_match_the_chart(release):
    """SERVICE and CONSUL in kind-common.sh are the names the chart gives the main Service and
    the Consul server StatefulSet, for any release name (Helm allows 53 characters)."""
    helm.validate_release_name(release)
    got = _common('echo "$SERVICE $CONSUL"', os.environ["PATH"], {"RELEASE": release}).split()
    objects = parse(render_as(None, release))
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    consul = [o["metadata"]["name"] for o in objects if o["kind"] == "StatefulSet" and "consul" in o["metadata"]["name"]]
    assert got[0] in services and got[0] == find(objects, "StatefulSet", got[0])["metadata"]["name"]
    assert [got[1]] == consul


def test_now_ms_without_gnu_date(tmp_path):
    """now_ms gives milliseconds with bash's EPOCHREALTIME, without it through perl, and without
    both in whole seconds; never through `date +%N`."""
    before = time.time() * 1000
    full = os.environ["PATH"]
    assert abs(int(_common("now_ms", full)) - before) < 5000
    assert abs(int(_common("unset EPOCHREALTIME; now_ms", full)) - before) < 5000
    bare = tmp_path / "bin"
    bare.mkdir()
    (bare / "date").symlink_to(shutil.which("date"))
    ms = int(_common("unset EPOCHREALTIME; now_ms", str(bare)))
    assert ms % 1000 == 0 and abs(ms - before) < 5000
