#!/usr/bin/env python3
"""Consistency checks of docker/k8s/*.yaml against the ConfigMap's relay.json, the
Dockerfile and the project version (what can be checked without a cluster).

  check_manifests.py REPO_ROOT [--extract-relay-json OUT]

Needs PyYAML (Debian: python3-yaml). Prints one line per check; exits 1 listing every
failed check. With --extract-relay-json the ConfigMap's relay.json is written to OUT,
so that the image test runs the real binary on the very file that gets deployed.
"""
import json
import os
import posixpath
import re
import sys

import yaml

NAMESPACED = {"ServiceAccount", "ConfigMap", "Secret", "DaemonSet", "PodDisruptionBudget",
              "NetworkPolicy", "Role", "RoleBinding", "Service"}


class Checker:
    def __init__(self):
        self.failed = []
        self.passed = 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
            print(f"  ok    {what}")
        else:
            self.failed.append(what)
            print(f"  FAIL  {what}")
        return ok


def get(doc, path, default=None):
    cur = doc
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def load_docs(k8s_dir):
    docs = {}
    for name in sorted(os.listdir(k8s_dir)):
        if not name.endswith(".yaml"):
            continue
        with open(os.path.join(k8s_dir, name)) as f:
            docs[name] = [d for d in yaml.safe_load_all(f) if d is not None]
    return docs


def one(objs, kind, c):
    found = [o for o in objs if o.get("kind") == kind]
    c.check(len(found) == 1, f"exactly one {kind} (found {len(found)})")
    return found[0] if found else {}


def main(argv):
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--extract-relay-json"):
        print(__doc__, file=sys.stderr)
        return 2
    root = argv[1]
    k8s = os.path.join(root, "docker", "k8s")
    c = Checker()
    docs = load_docs(k8s)
    objs = []
    kustomization = None
    for name, ds in docs.items():
        for d in ds:
            if d.get("kind") == "Kustomization":
                kustomization = d
                continue
            objs.append(d)
            kind, meta = d.get("kind"), d.get("metadata") or {}
            c.check(bool(d.get("apiVersion")) and bool(kind) and bool(meta.get("name")),
                    f"{name}: apiVersion, kind and metadata.name set")
            if kind in NAMESPACED:
                c.check(meta.get("namespace") == "sparkrelay",
                        f"{name}: {kind} {meta.get('name')} in namespace sparkrelay")

    # ---- the relay configuration ---------------------------------------------------
    cm = one(objs, "ConfigMap", c)
    relay_json = get(cm, "data", {}).get("relay.json")
    c.check(isinstance(relay_json, str), "ConfigMap has data.relay.json")
    try:
        conf = json.loads(relay_json or "")
    except ValueError as e:
        c.check(False, f"ConfigMap relay.json is JSON ({e})")
        conf = {}
    relay = conf.get("relay", {})
    listen = relay.get("listen", "0.0.0.0:8443")
    listen_port = int(listen.rsplit(":", 1)[1])
    pool_min = get(relay, "pool.port_min", 40000)
    pool_max = get(relay, "pool.port_max", 40999)
    drain_ms = relay.get("drain_timeout_ms", 30000)
    cert, key = get(relay, "tls.cert"), get(relay, "tls.key")
    c.check(cert and key, "relay.json sets relay.tls.cert and relay.tls.key")
    c.check(0 < pool_min <= pool_max < 65536 and not pool_min <= listen_port <= pool_max,
            f"pool {pool_min}-{pool_max} is a range that excludes listen port {listen_port}")
    routes = relay.get("routes", [])
    c.check(bool(routes) and all(r.get("executor_cidrs") for r in routes),
            "every route restricts executors to source CIDRs (routes[].executor_cidrs)")
    c.check(get(relay, "pool.advertise") is None,
            "relay.json leaves pool.advertise to the DaemonSet (node IP via env)")
    # Tenant limits on: the implicit tenant's (relay.default_tenant) while no tenants
    # are configured, otherwise every tenant's own.
    tenants = relay.get("tenants", [])
    limits = [get(t, "limits", {}) for t in tenants] if tenants else \
        [relay.get("default_tenant", {})]
    c.check(all(isinstance(lim.get(k), int) and lim.get(k) > 0
                for lim in limits for k in ("leases", "connections", "pending")),
            "relay.json sets tenant limits (leases, connections, pending) explicitly")
    c.check(isinstance(relay.get("max_grace_leases"), int) and relay["max_grace_leases"] > 0,
            "relay.json bounds the leases a tenant leaves in grace (max_grace_leases)")

    # ---- Dockerfile facts ----------------------------------------------------------
    with open(os.path.join(root, "docker", "Dockerfile")) as f:
        dockerfile = f.read()
    m = re.search(r"^USER\s+(\d+)", dockerfile, re.M)
    image_uid = int(m.group(1)) if m else None
    m = re.search(r"^COPY\s+docker/healthcheck\.sh\s+(\S+)", dockerfile, re.M)
    health_path = m.group(1) if m else None
    exposed = [int(p) for p in re.findall(r"^EXPOSE\s+(\d+)", dockerfile, re.M)]
    c.check(image_uid is not None and image_uid != 0, f"Dockerfile runs as non-root uid {image_uid}")
    c.check(exposed == [listen_port], f"Dockerfile EXPOSE {exposed} == relay.listen port")
    with open(os.path.join(root, "CMakeLists.txt")) as f:
        m = re.search(r"project\(sparkrelay\s+VERSION\s+([0-9.]+)", f.read())
    version = m.group(1) if m else None

    # ---- DaemonSet -----------------------------------------------------------------
    ds = one(objs, "DaemonSet", c)
    spec = ds.get("spec", {})
    sel = get(spec, "selector.matchLabels", {})
    pod_labels = get(spec, "template.metadata.labels", {})
    pod = get(spec, "template.spec", {})
    c.check(bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items()),
            "DaemonSet selector matches its pod labels")
    c.check(pod.get("hostNetwork") is True, "DaemonSet uses hostNetwork")
    c.check(pod.get("dnsPolicy") == "ClusterFirstWithHostNet",
            "hostNetwork pod keeps cluster DNS (ClusterFirstWithHostNet)")
    c.check(get(spec, "updateStrategy.type") == "RollingUpdate" and
            get(spec, "updateStrategy.rollingUpdate.maxUnavailable") is not None and
            get(spec, "updateStrategy.rollingUpdate.maxSurge", 0) == 0,
            "rolling update with maxUnavailable and maxSurge 0 (host ports)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    c.check(grace * 1000 > drain_ms,
            f"terminationGracePeriodSeconds {grace} s > relay.drain_timeout_ms {drain_ms}")
    c.check(get(pod, "securityContext.runAsNonRoot") is True and
            get(pod, "securityContext.runAsUser") == image_uid,
            f"pod runs as non-root uid {image_uid} (the image's USER)")
    c.check(pod.get("automountServiceAccountToken") is False,
            "no service account token mounted")
    sa_names = [get(o, "metadata.name") for o in objs if o.get("kind") == "ServiceAccount"]
    c.check(pod.get("serviceAccountName") in sa_names,
            f"serviceAccountName {pod.get('serviceAccountName')} is defined")
    rbac = [o.get("kind") for o in objs if o.get("kind") in
            ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    print(f"  info  RBAC objects: {rbac or 'none (the relay does not call the API)'}")

    containers = pod.get("containers", [])
    c.check(len(containers) == 1, "DaemonSet has one container")
    ctr = containers[0] if containers else {}
    args = ctr.get("args", [])
    c.check(args[:2] == ["relay", "--config"] and len(args) == 3,
            f"container runs 'relay --config FILE' ({args})")
    admin = get(relay, "admin.listen", "127.0.0.1:9090")
    admin_port = int(admin.rsplit(":", 1)[1]) if admin else None
    c.check(admin is not None, f"relay.json keeps the admin API on ({admin}): the probes use it")
    for probe, sub in (("readinessProbe", "ready"), ("livenessProbe", "health")):
        cmd = get(ctr, f"{probe}.exec.command", [])
        url = cmd[cmd.index("--admin") + 1] if "--admin" in cmd[:-1] else "http://127.0.0.1:9090"
        m = re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\]):(\d+)/?$", url)
        c.check(cmd[:2] in (["sparkrelay", "ctl"], ["/usr/local/bin/sparkrelay", "ctl"])
                and cmd[-1] == sub and m is not None and int(m.group(2)) == admin_port,
                f"{probe}: sparkrelay ctl {sub} on the admin port {admin_port} ({url})")
    c.check(health_path is not None, f"the image has the health check script ({health_path})")
    c.check(bool(get(ctr, "resources.requests.cpu")) and
            bool(get(ctr, "resources.requests.memory")) and
            bool(get(ctr, "resources.limits.memory")),
            "resources: cpu/memory requests and a memory limit")
    c.check(get(ctr, "securityContext.allowPrivilegeEscalation") is False and
            get(ctr, "securityContext.readOnlyRootFilesystem") is True,
            "container: no privilege escalation, read-only root")
    ports = {p.get("name"): p for p in ctr.get("ports", [])}
    tp = ports.get("tunnel", {})
    c.check(tp.get("containerPort") == listen_port and tp.get("hostPort") == listen_port,
            f"port 'tunnel' {tp.get('containerPort')}/{tp.get('hostPort')} == relay.listen "
            f"port {listen_port}")
    env = {e.get("name"): e for e in ctr.get("env", [])}
    c.check(get(env.get("SPARKRELAY_RELAY_POOL_ADVERTISE", {}), "valueFrom.fieldRef.fieldPath")
            == "status.hostIP", "pool.advertise comes from the node IP")
    # With hostNetwork every node process and hostNetwork pod reaches the admin port on
    # loopback: a token is required there too. `sparkrelay ctl` reads the same variable.
    admin_ref = get(env.get("SPARKRELAY_RELAY_ADMIN_TOKEN", {}), "valueFrom.secretKeyRef", {})
    c.check(bool(admin_ref.get("name")) and bool(admin_ref.get("key")) and
            not admin_ref.get("optional", False) and get(relay, "admin.token") is None,
            "admin token from a required Secret (SPARKRELAY_RELAY_ADMIN_TOKEN), not in "
            "relay.json")

    # Volumes: the config file and the TLS files are where relay.json says.
    mounts = {m.get("name"): m.get("mountPath") for m in ctr.get("volumeMounts", [])}
    vols = {v.get("name"): v for v in pod.get("volumes", [])}

    def mount_of(kind, ref_key, name):
        for vname, v in vols.items():
            if get(v, f"{kind}.{ref_key}") == name:
                return mounts.get(vname)
        return None

    cfg_dir = mount_of("configMap", "name", get(cm, "metadata.name"))
    cfg_file = args[2] if len(args) == 3 else ""
    c.check(cfg_dir is not None and posixpath.dirname(cfg_file) == cfg_dir and
            posixpath.basename(cfg_file) in get(cm, "data", {}),
            f"--config {cfg_file} is a key of the mounted ConfigMap ({cfg_dir})")
    secrets = [o for o in objs if o.get("kind") == "Secret"]
    sec = next((s for s in secrets if get(s, "metadata.name") == "sparkrelay-tls"), {})
    sec_keys = set(sec.get("stringData", {}) or {}) | set(sec.get("data", {}) or {})
    tls_dir = mount_of("secret", "secretName", "sparkrelay-tls")
    for what, path in (("cert", cert), ("key", key)):
        c.check(tls_dir is not None and path and posixpath.dirname(path) == tls_dir and
                posixpath.basename(path) in sec_keys,
                f"relay.tls.{what} {path} is a key of the mounted sparkrelay-tls Secret")

    # ---- image ---------------------------------------------------------------------
    images = set()
    for o in objs:
        for ct in get(o, "spec.template.spec.containers", []) or []:
            images.add(ct.get("image"))
    c.check(len(images) == 1, f"one image everywhere ({sorted(images)})")
    image = next(iter(images)) if images else ":"
    repo, _, tag = image.rpartition(":")
    kimages = (kustomization or {}).get("images", [])
    c.check(any(i.get("name") == repo and i.get("newTag", tag) == tag for i in kimages),
            f"kustomization images entry matches {image}")
    c.check(tag == version, f"image tag {tag} == project version {version}")

    # ---- kustomization -------------------------------------------------------------
    res = set((kustomization or {}).get("resources", []))
    expected = set(docs) - {"kustomization.yaml", "secret.yaml"}
    c.check(res == expected, f"kustomization lists every manifest but the Secret template "
                             f"(missing {sorted(expected - res)}, extra {sorted(res - expected)})")

    # ---- PodDisruptionBudget -------------------------------------------------------
    pdb = one(objs, "PodDisruptionBudget", c)
    c.check(get(pdb, "spec.selector.matchLabels") == sel, "PDB selects the relay pods")
    c.check(get(pdb, "spec.maxUnavailable") is not None or
            get(pdb, "spec.minAvailable") is not None, "PDB sets a budget")

    # ---- NetworkPolicy -------------------------------------------------------------
    np_ = one(objs, "NetworkPolicy", c)
    npsel = get(np_, "spec.podSelector.matchLabels", {})
    c.check(bool(npsel) and all(pod_labels.get(k) == v for k, v in npsel.items()),
            "NetworkPolicy selects the relay pods")
    pool_rule = listen_rule = None
    for rule in get(np_, "spec.ingress", []) or []:
        for p in rule.get("ports", []):
            if p.get("port") == pool_min and p.get("endPort") == pool_max:
                pool_rule = rule
            if p.get("port") == listen_port and "endPort" not in p:
                listen_rule = rule
    c.check(pool_rule is not None,
            f"NetworkPolicy opens exactly the pool {pool_min}-{pool_max}")
    c.check(pool_rule is not None and all(
        get(f, "podSelector.matchLabels", {}).get("spark-role") == "executor"
        for f in pool_rule.get("from", [])) and bool(pool_rule.get("from")),
        "pool ports only from spark-role=executor pods")
    c.check(listen_rule is not None, f"NetworkPolicy opens the tunnel port {listen_port}")

    if len(argv) == 4:
        with open(argv[3], "w") as f:
            f.write(relay_json or "")
        print(f"  info  wrote the ConfigMap's relay.json to {argv[3]}")
    print(f"manifests: {c.passed} passed, {len(c.failed)} failed")
    if c.failed:
        print("failed checks:\n  " + "\n  ".join(c.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
