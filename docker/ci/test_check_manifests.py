#!/usr/bin/env python3
"""The manifest check must be able to fail: each case below copies docker/k8s (the
fleet component included), the
Dockerfile, CMakeLists.txt and docs/operations.md to a temporary folder, breaks one
thing the way a person editing them could, and expects check_manifests.py to exit 1
naming it. The unmodified copy must pass. Standard library and PyYAML only.

  test_check_manifests.py REPO_ROOT
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (name, file, regex to find, replacement, text the failure must mention)
NODE_LOCAL = "docker/k8s/fleet/node-local/relay-daemonset-patch.yaml"

CASES = [
    ("misspelt DaemonSet field", "docker/k8s/daemonset.yaml",
     r"\n      priorityClassName:", "\n      priorityClass:", "unknown field 'priorityClass'"),
    ("wrong type", "docker/k8s/daemonset.yaml",
     r"hostNetwork: true", "hostNetwork: \"yes\"", "must be true or false"),
    ("value outside an enumeration", "docker/k8s/daemonset.yaml",
     r"imagePullPolicy: IfNotPresent", "imagePullPolicy: Sometimes", "must be one of"),
    ("field at the wrong level", "docker/k8s/pdb.yaml",
     r"\nspec:\n  maxUnavailable: 1", "\nmaxUnavailable: 1\nspec:", "unknown field 'maxUnavailable'"),
    ("PriorityClass that does not exist", "docker/k8s/daemonset.yaml",
     r"priorityClassName: sparkrelay", "priorityClassName: sparkrelay-high",
     "priorityClassName 'sparkrelay-high'"),
    ("toleration of every taint", "docker/k8s/daemonset.yaml",
     r"\n      securityContext:\n        runAsNonRoot",
     "\n      tolerations:\n        - operator: Exists\n      securityContext:\n        runAsNonRoot",
     "no toleration of every taint"),
    ("Secret the kustomization does not make", "docker/k8s/daemonset.yaml",
     r"secretName: sparkrelay-tls", "secretName: sparkrelay-certs", "Secret 'sparkrelay-certs'"),
    ("volume mounted but not defined", "docker/k8s/daemonset.yaml",
     r"- name: tmp\n          emptyDir:", "- name: scratch\n          emptyDir:",
     "mounts volume 'tmp'"),
    ("PriorityClass with a namespace", "docker/k8s/priorityclass.yaml",
     r"\n  name: sparkrelay\n", "\n  name: sparkrelay\n  namespace: sparkrelay\n",
     "unknown field 'namespace'"),
    ("secret file outside secrets/", "docker/k8s/kustomization.yaml",
     r"relay.key=secrets/relay.key", "relay.key=relay.key", "relay.key is in secrets/"),
    ("docs sidecar without its volumes", "docs/operations.md",
     r"  volumes:\n    - name: sparkrelay  .*?sizeLimit: 16Mi\}\n", "",
     "mounts volume 'sparkrelay'"),
    ("docs sidecar as an ordinary init container", "docs/operations.md",
     r"      restartPolicy: Always .*\n", "", "has the in-pod sidecar example"),
    ("docs sidecar without resources", "docs/operations.md",
     r"      resources:\n.*?limits: \{memory: 512Mi\}\n", "", "cpu/memory requests"),
    ("docs sidecar without a startup probe", "docs/operations.md",
     r"      startupProbe:\n.*?failureThreshold: 150\n", "", "startupProbe runs"),
    ("docs sidecar on a writable root", "docs/operations.md",
     r"readOnlyRootFilesystem: true\n        capabilities: \{drop",
     "readOnlyRootFilesystem: false\n        capabilities: {drop", "read-only root"),
    ("rolling update that stops the old relay first", "docker/k8s/daemonset.yaml",
     r"maxSurge: 1\n      maxUnavailable: 0", "maxSurge: 0\n      maxUnavailable: 1",
     "maxSurge 1 and maxUnavailable 0"),
    ("relay that does not take over", "docker/k8s/daemonset.yaml",
     r'"--takeover=auto",\n\s+"--wait-after-handover"', '"--wait-after-handover"',
     "--takeover=auto --wait-after-handover"),
    ("handover socket not on the node", "docker/k8s/daemonset.yaml",
     r"hostPath:\n            path: /run/sparkrelay\n            type: DirectoryOrCreate",
     "emptyDir: {}", "relay.handover_socket"),
    ("container ports with hostNetwork", "docker/k8s/daemonset.yaml",
     r"\n          readinessProbe:",
     "\n          ports:\n            - containerPort: 8443\n          readinessProbe:",
     "no container ports listed"),
    ("readiness on the shared admin port only", "docker/k8s/daemonset.yaml",
     r'command: \["/usr/local/bin/sparkrelay-healthcheck", "ready"\]',
     'command: ["sparkrelay", "ctl", "--admin", "http://127.0.0.1:9090", "ready"]',
     "readinessProbe runs"),
    ("PodMonitor scraping another port", "docker/k8s/monitoring/podmonitor.yaml",
     r"- targetPort: 9469", "- targetPort: 9470", "scrapes port 9470"),
    ("metrics on loopback only", "docker/k8s/configmap.yaml",
     r'"metrics": \{"listen": "0\.0\.0\.0:9469"\}', '"metrics": {"listen": "127.0.0.1:9469"}',
     "serves metrics on the node's addresses"),
    ("PodMonitor with a misspelt field", "docker/k8s/monitoring/podmonitor.yaml",
     r"podMetricsEndpoints:", "podMetricEndpoints:", "unknown field 'podMetricEndpoints'"),
    ("docs sidecar with an old image tag", "docs/operations.md",
     r"image: registry.example.com/sparkrelay:0\.1\.0\n      restartPolicy",
     "image: registry.example.com/sparkrelay:0.0.9\n      restartPolicy", "docs sidecar: image"),
    # The relay fleet (docker/k8s/fleet, fleet/node-local).
    ("relays Service that publishes draining relays", "docker/k8s/fleet/relays-service.yaml",
     r"\n  publishNotReadyAddresses: false", "\n  publishNotReadyAddresses: true",
     "publishes Ready relays only"),
    ("relays Service selecting no relay", "docker/k8s/fleet/relays-service.yaml",
     r"component: relay\n  ports:", "component: relays\n  ports:",
     "one Service selecting the relay pods"),
    ("peer port in relay.json not the NetworkPolicy's", "docker/k8s/fleet/relay-config-patch.yaml",
     r'"peer_listen": "0\.0\.0\.0:8444"', '"peer_listen": "0.0.0.0:8445"',
     "opens the relays' peer port 8445"),
    ("peer port inside the lease pool", "docker/k8s/fleet/relay-config-patch.yaml",
     r'"peer_listen": "0\.0\.0\.0:8444"', '"peer_listen": "0.0.0.0:26100"',
     "outside the pool"),
    ("fleet relay.json drifted from the base's", "docker/k8s/fleet/relay-config-patch.yaml",
     r'"grace_s": 300', '"grace_s": 600', "plus relay.fleet (edit both)"),
    ("relays dial etcd on a port its client Service lacks",
     "docker/k8s/fleet/relay-config-patch.yaml",
     r"sparkrelay-etcd-client\.sparkrelay\.svc:2379", "sparkrelay-etcd-client.sparkrelay.svc:2479",
     "relay.fleet.etcd https://sparkrelay-etcd-client.sparkrelay.svc:2479"),
    ("relays dial etcd without TLS", "docker/k8s/fleet/relay-config-patch.yaml",
     r"https://sparkrelay-etcd-client", "http://sparkrelay-etcd-client", "is https to the etcd"),
    ("relay's etcd certificate not in its Secret", "docker/k8s/fleet/relay-config-patch.yaml",
     r"/etc/sparkrelay/etcd/client\.pem", "/etc/sparkrelay/etcd/relay.pem",
     "relay.fleet.etcd_cert /etc/sparkrelay/etcd/relay.pem"),
    ("peer address on another port", "docker/k8s/fleet/relay-daemonset-patch.yaml",
     r"value: \$\(NODE_IP\):8444", "value: $(NODE_IP):8443", "peer_advertise port 8443"),
    ("fleet Secret the component does not make", "docker/k8s/fleet/relay-daemonset-patch.yaml",
     r"secretName: sparkrelay-fleet\n", "secretName: sparkrelay-peers\n",
     "relay.fleet.secret_file"),
    ("relay still advertises the node IP", "docker/k8s/fleet/relay-daemonset-patch.yaml",
     r"\n              valueFrom: null", "", "advertises the headless Service"),
    ("etcd without progress notifications", "docker/k8s/fleet/etcd.yaml",
     r"            - --experimental-watch-progress-notify-interval=30s\n", "",
     "at most relay.fleet.watch_idle_ms / 2.5"),
    ("etcd progress slower than the relays' watch idle", "docker/k8s/fleet/etcd.yaml",
     r"notify-interval=30s", "notify-interval=40s", "at most relay.fleet.watch_idle_ms / 2.5"),
    ("etcd without client certificates", "docker/k8s/fleet/etcd.yaml",
     r"\n            - --client-cert-auth", "", "etcd --client-cert-auth"),
    ("etcd peers without TLS", "docker/k8s/fleet/etcd.yaml",
     r"--listen-peer-urls=https://", "--listen-peer-urls=http://",
     "with TLS on the client and peer"),
    ("etcd certificate not in its Secret", "docker/k8s/fleet/etcd.yaml",
     r"--cert-file=/etc/etcd/tls/server\.pem", "--cert-file=/etc/etcd/tls/etcd.pem",
     "etcd --cert-file /etc/etcd/tls/etcd.pem"),
    ("etcd with an even number of members", "docker/k8s/fleet/etcd.yaml",
     r"replicas: 3", "replicas: 4", "odd number of members"),
    ("etcd member list short of the replicas", "docker/k8s/fleet/etcd.yaml",
     r",\\\n\s+sparkrelay-etcd-2=[^\"]*", "", "--initial-cluster names each of the 3"),
    ("etcd StatefulSet naming another Service", "docker/k8s/fleet/etcd.yaml",
     r"serviceName: sparkrelay-etcd\n", "serviceName: sparkrelay-etcd-peers\n",
     "is a headless Service"),
    ("etcd members started one by one", "docker/k8s/fleet/etcd.yaml",
     r"podManagementPolicy: Parallel", "podManagementPolicy: OrderedReady", "start in parallel"),
    ("etcd anti-affinity on the zone only", "docker/k8s/fleet/etcd.yaml",
     r"- topologyKey: kubernetes.io/hostname", "- topologyKey: topology.kubernetes.io/zone",
     "different nodes"),
    ("etcd PDB that breaks the quorum", "docker/k8s/fleet/etcd.yaml",
     r"spec:\n  maxUnavailable: 1", "spec:\n  maxUnavailable: 2", "keeps a quorum of 2"),
    ("etcd image not pinned", "docker/k8s/fleet/etcd.yaml",
     r"image: registry.k8s.io/etcd:3\.5\.15-0", "image: registry.k8s.io/etcd:latest",
     "is pinned by version"),
    ("etcd data on the container's disk", "docker/k8s/fleet/etcd.yaml",
     r"--data-dir=/var/lib/etcd/data", "--data-dir=/tmp/etcd", "on a persistent volume"),
    ("etcd peer port open to the relays", "docker/k8s/fleet/networkpolicy.yaml",
     r"(    # Members to members only\.\n    - from:\n)",
     "    # Members to members only.\n    - from:\n"
     "        - ipBlock:\n            cidr: 10.0.0.0/8\n",
     "peer port 2380 to the members only"),
    ("misspelt StatefulSet field", "docker/k8s/fleet/etcd.yaml",
     r"podManagementPolicy:", "podManagmentPolicy:", "unknown field 'podManagmentPolicy'"),
    ("fleet manifest not in the component", "docker/k8s/fleet/kustomization.yaml",
     r"\n  - relays-service\.yaml", "", "missing ['relays-service.yaml']"),
    ("node-local: bind and advertise differ", NODE_LOCAL,
     r"SPARKRELAY_RELAY_POOL_BIND\n              value: 169\.254\.20\.30",
     "SPARKRELAY_RELAY_POOL_BIND\n              value: 0.0.0.0", "the pool binds the advertised"),
    ("node-local: address on the interface is another", NODE_LOCAL,
     r"ip addr add 169\.254\.20\.30/32", "ip addr add 169.254.20.31/32", "puts 169.254.20.30/32"),
    ("node-local: EC2's metadata address", NODE_LOCAL,
     r"POOL_ADVERTISE\n              value: 169\.254\.20\.30",
     "POOL_ADVERTISE\n              value: 169.254.169.254", "is a link-local address"),
    ("node-local: privileged init container", NODE_LOCAL,
     r'add: \["NET_ADMIN"\]', 'add: ["NET_ADMIN", "SYS_ADMIN"]', "NET_ADMIN and nothing else"),
]


def copy_tree(root, dst):
    for rel in ("docker/k8s", "docker/Dockerfile", "docker/healthcheck.sh", "CMakeLists.txt",
                "docs/operations.md"):
        src = os.path.join(root, rel)
        out = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, out)
        else:
            shutil.copy(src, out)


def run_check(tree, render="off"):
    p = subprocess.run([sys.executable, os.path.join(HERE, "check_manifests.py"), tree,
                        "--render", render], capture_output=True, text=True, timeout=180)
    return p.returncode, p.stdout + p.stderr


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        copy_tree(root, base)
        rc, out = run_check(base)
        if rc != 0:
            print(out, file=sys.stderr)
            print("test_check_manifests: the unmodified manifests fail", file=sys.stderr)
            return 1
        for i, (name, rel, pattern, repl, expect) in enumerate(CASES):
            tree = os.path.join(tmp, f"case{i}")
            shutil.copytree(base, tree)
            path = os.path.join(tree, rel)
            with open(path) as f:
                text = f.read()
            new, n = re.subn(pattern, lambda _m: repl, text, count=1, flags=re.S)
            if n != 1:
                failed.append(f"{name}: pattern not found in {rel} (update this test)")
                continue
            with open(path, "w") as f:
                f.write(new)
            rc, out = run_check(tree)
            fail_lines = "\n".join(line for line in out.splitlines() if "FAIL" in line or
                                   line.startswith("          "))
            if rc == 1 and expect in fail_lines:
                print(f"  ok    caught: {name}")
            else:
                failed.append(f"{name}: exit {rc}, failures do not mention {expect!r}:\n"
                              f"{fail_lines or out[-800:]}")
                print(f"  FAIL  not caught: {name}")
    print(f"check_manifests self-test: {len(CASES) - len(failed)} passed, {len(failed)} failed")
    if failed:
        print("\n".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
