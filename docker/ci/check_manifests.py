#!/usr/bin/env python3
"""Checks of docker/k8s/*.yaml and of the Kubernetes example in docs/operations.md,
what can be checked without a cluster:

  - every object against a schema of the fields used (k8s_schema.py: unknown fields,
    types, required fields, enumerations), as the API server would;
  - consistency with the ConfigMap's relay.json, the Dockerfile and the project
    version (ports, paths, user, image tag, probes);
  - references: Secrets (made by the kustomization's secretGenerator), volumes,
    the PriorityClass, tolerations;
  - the in-pod sidecar example of docs/operations.md: a native sidecar with its
    volumes, resources, securityContext and a startup probe;
  - monitoring/*.yaml (applied on their own: a PodMonitor needs the Prometheus
    Operator): the schema, and that they scrape the DaemonSet's metrics port;
  - the relay fleet (fleet/, a kustomize Component, and fleet/node-local/): etcd's
    StatefulSet, Services, PDB and TLS flags against each other and the Secrets the
    component makes; relay.fleet against the base's relay.json, the etcd client
    Service, the mounted Secrets, the NetworkPolicy's peer port and the DaemonSet
    patch; the headless relays Service; the node-local address and its init container;
  - with kubectl at hand, `kubectl kustomize` of the folder (offline), alone and with
    the fleet components, and the schema and references again on what it renders.

  check_manifests.py REPO_ROOT [--extract-relay-json OUT] [--render auto|require|off]

Needs PyYAML (Debian: python3-yaml). Prints one line per check; exits 1 listing every
failed check. With --extract-relay-json the ConfigMap's relay.json is written to OUT,
so that the image test runs the real binary on the very file that gets deployed.
--render require fails when kubectl is missing (auto: skipped with a note).
"""
import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

import k8s_schema

NAMESPACED = {"ServiceAccount", "ConfigMap", "Secret", "DaemonSet", "PodDisruptionBudget",
              "NetworkPolicy", "Role", "RoleBinding", "Service", "PodMonitor",
              "ServiceMonitor"}
SYSTEM_PRIORITY_CLASSES = {"system-node-critical", "system-cluster-critical"}


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


def check_schema(c, where, doc):
    errs = k8s_schema.validate(doc)
    name = get(doc, "metadata.name", "") if isinstance(doc, dict) else ""
    what = f"{where}: {doc.get('kind') if isinstance(doc, dict) else '?'} {name}".rstrip()
    c.check(not errs, f"{what} fits the schema of the fields used" +
            ("".join(f"\n          {e}" for e in errs)))


def generated_secrets(kustomization):
    """{name: set of keys} of the kustomization's secretGenerator."""
    out = {}
    for g in (kustomization or {}).get("secretGenerator", []) or []:
        keys = set()
        for f in g.get("files", []) or []:
            keys.add(f.split("=", 1)[0] if "=" in f else posixpath.basename(f))
        for lit in g.get("literals", []) or []:
            keys.add(lit.split("=", 1)[0])
        out[g.get("name")] = keys
    return out


def claim_names(obj):
    """The volumeClaimTemplates of a StatefulSet: volumes its pods get too."""
    return {get(v, "metadata.name") for v in get(obj, "spec.volumeClaimTemplates", []) or []}


def check_pod_refs(c, what, pod, secret_names, claims=()):
    """Volumes, Secrets, tolerations of one pod spec."""
    vols = {v.get("name") for v in pod.get("volumes", []) or []} | set(claims)
    ctrs = (pod.get("initContainers", []) or []) + (pod.get("containers", []) or [])
    for ct in ctrs:
        for m in ct.get("volumeMounts", []) or []:
            c.check(m.get("name") in vols,
                    f"{what}: container {ct.get('name')} mounts volume {m.get('name')!r}, "
                    f"which the pod defines")
        for e in ct.get("env", []) or []:
            ref = get(e, "valueFrom.secretKeyRef")
            if ref and secret_names is not None and not ref.get("optional", False):
                c.check(ref.get("name") in secret_names,
                        f"{what}: env {e.get('name')} reads Secret {ref.get('name')!r}, "
                        f"which the kustomization makes")
    for v in pod.get("volumes", []) or []:
        sname = get(v, "secret.secretName")
        if sname and secret_names is not None and not get(v, "secret.optional", False):
            c.check(sname in secret_names,
                    f"{what}: volume {v.get('name')} mounts Secret {sname!r}, which the "
                    f"kustomization makes")
    for t in pod.get("tolerations", []) or []:
        c.check(not (t.get("operator") == "Exists" and not t.get("key")),
                f"{what}: no toleration of every taint (operator Exists without a key)")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--extract-relay-json", metavar="OUT")
    ap.add_argument("--render", choices=("auto", "require", "off"), default="auto")
    a = ap.parse_args(argv[1:])
    root = a.root
    k8s = os.path.join(root, "docker", "k8s")
    c = Checker()
    docs = load_docs(k8s)
    objs = []
    kustomization = None
    for name, ds in docs.items():
        for d in ds:
            check_schema(c, name, d)
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
            else:
                c.check("namespace" not in meta,
                        f"{name}: {kind} {meta.get('name')} is cluster-scoped (no namespace)")

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
    pool_min = get(relay, "pool.port_min", 26000)
    pool_max = get(relay, "pool.port_max", 26999)
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
            get(spec, "updateStrategy.rollingUpdate.maxUnavailable") == 0 and
            get(spec, "updateStrategy.rollingUpdate.maxSurge") == 1,
            "rolling update with maxSurge 1 and maxUnavailable 0 (the new relay takes over "
            "from the old one on its node)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    c.check(grace * 1000 > drain_ms,
            f"terminationGracePeriodSeconds {grace} s > relay.drain_timeout_ms {drain_ms}")
    c.check(get(pod, "securityContext.runAsNonRoot") is True and
            get(pod, "securityContext.runAsUser") == image_uid,
            f"pod runs as non-root uid {image_uid} (the image's USER)")
    c.check(pod.get("automountServiceAccountToken") is False,
            "no service account token mounted")
    pcs = {get(o, "metadata.name"): o for o in objs if o.get("kind") == "PriorityClass"}
    pcn = pod.get("priorityClassName")
    c.check(pcn in pcs or pcn in SYSTEM_PRIORITY_CLASSES,
            f"priorityClassName {pcn!r} is a PriorityClass of these manifests or a "
            f"system class")
    if pcn in pcs:
        c.check(pcs[pcn].get("globalDefault", False) is False,
                f"PriorityClass {pcn} is not the cluster's global default")
    gen = generated_secrets(kustomization)
    check_pod_refs(c, "DaemonSet", pod, set(gen))
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
    c.check(args[:2] == ["relay", "--config"] and len(args) >= 3 and
            set(args[3:]) == {"--takeover=auto", "--wait-after-handover"},
            f"container runs 'relay --config FILE --takeover=auto --wait-after-handover' "
            f"({args})")
    admin = get(relay, "admin.listen", "127.0.0.1:9090")
    admin_port = int(admin.rsplit(":", 1)[1]) if admin else None
    c.check(admin is not None, f"relay.json keeps the admin API on ({admin}): the probes use it")
    cmd = get(ctr, "livenessProbe.exec.command", [])
    url = cmd[cmd.index("--admin") + 1] if "--admin" in cmd[:-1] else "http://127.0.0.1:9090"
    m = re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\]):(\d+)/?$", url)
    c.check(cmd[:2] in (["sparkrelay", "ctl"], ["/usr/local/bin/sparkrelay", "ctl"])
            and cmd[-1] == "health" and m is not None and int(m.group(2)) == admin_port,
            f"livenessProbe: sparkrelay ctl health on the admin port {admin_port} ({url})")
    # Both pods of a rolling update share the node's admin port: readiness must also
    # ask whether this pod's relay holds the tunnel listener (the health check script).
    c.check(get(ctr, "readinessProbe.exec.command", []) == [health_path, "ready"],
            f"readinessProbe runs {health_path} ready (this pod's relay holds the listener)")
    c.check(health_path is not None, f"the image has the health check script ({health_path})")
    c.check(bool(get(ctr, "resources.requests.cpu")) and
            bool(get(ctr, "resources.requests.memory")) and
            bool(get(ctr, "resources.limits.memory")),
            "resources: cpu/memory requests and a memory limit")
    c.check(get(ctr, "securityContext.allowPrivilegeEscalation") is False and
            get(ctr, "securityContext.readOnlyRootFilesystem") is True,
            "container: no privilege escalation, read-only root")
    # With hostNetwork the scheduler counts container ports as host ports: listed, they
    # would keep the new pod of a rolling update off the node its old pod is on.
    c.check(not any(ct.get("ports") for ct in (pod.get("initContainers") or []) + containers),
            "no container ports listed (hostNetwork: they would block the surge pod)")
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
    cfg_file = args[2] if len(args) >= 3 else ""
    # The handover socket: on the node (hostPath), so that the next relay pod on the
    # node finds the running one there.
    ho = relay.get("handover_socket", "/run/sparkrelay/handover.sock")
    ho_dir = posixpath.dirname(ho or "")
    ho_vol = [v for v in pod.get("volumes", []) or []
              if get(v, "hostPath.path") and mounts.get(v.get("name")) == ho_dir]
    c.check(bool(ho) and len(ho_vol) == 1 and
            get(ho_vol[0], "hostPath.type") == "DirectoryOrCreate",
            f"relay.handover_socket {ho} is in a hostPath directory mounted at {ho_dir}")
    c.check(cfg_dir is not None and posixpath.dirname(cfg_file) == cfg_dir and
            posixpath.basename(cfg_file) in get(cm, "data", {}),
            f"--config {cfg_file} is a key of the mounted ConfigMap ({cfg_dir})")
    sec_keys = gen.get("sparkrelay-tls", set())
    tls_dir = mount_of("secret", "secretName", "sparkrelay-tls")
    for what, path in (("cert", cert), ("key", key)):
        c.check(tls_dir is not None and path and posixpath.dirname(path) == tls_dir and
                posixpath.basename(path) in sec_keys,
                f"relay.tls.{what} {path} is a key of the mounted sparkrelay-tls Secret "
                f"(kustomization secretGenerator)")
    c.check(not any(o.get("kind") == "Secret" for o in objs),
            "no Secret in the manifests: the kustomization makes them from files")
    for g in (kustomization or {}).get("secretGenerator", []) or []:
        for f in g.get("files", []) or []:
            src = f.split("=", 1)[1] if "=" in f else f
            c.check(src.startswith("secrets/") and "/" not in src[len("secrets/"):],
                    f"secretGenerator {g.get('name')}: {src} is in secrets/")
    try:
        with open(os.path.join(k8s, "secrets", ".gitignore")) as f:
            ignored = f.read().split("\n")
    except OSError:
        ignored = []
    c.check("*" in ignored, "secrets/.gitignore keeps every key and token out of git")

    # ---- image ---------------------------------------------------------------------
    images = set()
    for o in objs:
        for ct in (get(o, "spec.template.spec.containers", []) or []) + \
                (get(o, "spec.template.spec.initContainers", []) or []):
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
    expected = set(docs) - {"kustomization.yaml"}
    c.check(res == expected, f"kustomization lists every manifest "
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

    # ---- metrics: relay.json, DaemonSet, NetworkPolicy, monitoring/ -----------------
    mlisten = get(relay, "metrics.listen")
    mport = int(mlisten.rsplit(":", 1)[1]) if mlisten else None
    c.check(mport is not None and mlisten.rsplit(":", 1)[0] in ("0.0.0.0", "[::]"),
            f"relay.json serves metrics on the node's addresses ({mlisten}): Prometheus "
            f"scrapes them without the admin token")
    # No container ports (hostNetwork, see above): the relay's metrics port is the
    # node's, and monitors name it by number.
    c.check(mport != admin_port, f"metrics port {mport} is not the admin port {admin_port}")
    c.check(any(p.get("port") == mport and "endPort" not in p
                for rule in get(np_, "spec.ingress", []) or [] for p in rule.get("ports", [])),
            f"NetworkPolicy opens the metrics port {mport}")
    mon_dir = os.path.join(k8s, "monitoring")
    mon = load_docs(mon_dir) if os.path.isdir(mon_dir) else {}
    monitors = []
    for name, ds_ in mon.items():
        for d in ds_:
            check_schema(c, "monitoring/" + name, d)
            c.check(get(d, "metadata.namespace") == "sparkrelay",
                    f"monitoring/{name}: {d.get('kind')} in namespace sparkrelay")
            if d.get("kind") in ("PodMonitor", "ServiceMonitor"):
                monitors.append((name, d))
    c.check(any(d.get("kind") == "PodMonitor" for _, d in monitors),
            "monitoring/ has a PodMonitor example")
    for name, d in monitors:
        msel = get(d, "spec.selector.matchLabels", {})
        c.check(bool(msel) and all(pod_labels.get(k) == v for k, v in msel.items()),
                f"monitoring/{name}: selects the relay pods")
        eps = get(d, "spec.podMetricsEndpoints", []) or get(d, "spec.endpoints", []) or []
        for ep in eps:
            c.check(ep.get("targetPort") == mport and "port" not in ep,
                    f"monitoring/{name}: scrapes port {ep.get('targetPort', ep.get('port'))!r}, "
                    f"relay.metrics.listen's port {mport} (by number: the pods list no ports)")
            c.check(ep.get("path", "/metrics") == "/metrics" and "authorization" not in ep and
                    "bearerTokenSecret" not in ep,
                    f"monitoring/{name}: GET /metrics without a token")

    # ---- the in-pod sidecar of docs/operations.md ---------------------------------
    check_doc_sidecar(c, root, image, health_path, version)

    # ---- the relay fleet (docker/k8s/fleet) ------------------------------------------
    check_fleet(c, k8s, {
        "cm_name": get(cm, "metadata.name"), "conf": conf, "ds_name": get(ds, "metadata.name"),
        "sel": sel, "pod_labels": pod_labels, "listen_port": listen_port,
        "admin_port": admin_port, "metrics_port": mport, "pool_min": pool_min,
        "pool_max": pool_max})

    # ---- kubectl kustomize --------------------------------------------------------
    render(c, k8s, a.render)

    if a.extract_relay_json:
        with open(a.extract_relay_json, "w") as f:
            f.write(relay_json or "")
        print(f"  info  wrote the ConfigMap's relay.json to {a.extract_relay_json}")
    print(f"manifests: {c.passed} passed, {len(c.failed)} failed")
    if c.failed:
        print("failed checks:\n  " + "\n  ".join(c.failed), file=sys.stderr)
        return 1
    return 0


# ---- the relay fleet: docker/k8s/fleet (a kustomize Component) and fleet/node-local ---

FLEET_KEYS = {"etcd", "etcd_ca", "etcd_cert", "etcd_key", "prefix", "peer_listen",
              "secret_file", "ttl_s", "watch_idle_ms"}
LINK_LOCAL = re.compile(r"169\.254\.([0-9]{1,3})\.([0-9]{1,3})")


def pinned(image):
    """An image named by a version tag (digits, not latest) or a digest."""
    if "@sha256:" in (image or ""):
        return True
    tag = (image or "").rpartition(":")[2]
    return "/" not in tag and tag != "latest" and re.search(r"[0-9]", tag) is not None


def url_parts(url):
    m = re.match(r"^(https?)://([^/:]+):([0-9]+)/?$", url or "")
    return (m.group(1), m.group(2), int(m.group(3))) if m else (None, None, None)


def flags_of(args):
    """--name=value arguments as {name: value}; bare flags map to True."""
    out = {}
    for arg in args or []:
        if not isinstance(arg, str) or not arg.startswith("--"):
            continue
        k, eq, v = arg[2:].partition("=")
        out[k] = v if eq else True
    return out


def port_of(addr):
    try:
        return int(str(addr).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


def load_component(c, where, folder):
    """(kustomization, {file: [docs]}) of a Component folder; schema on every file,
    patches as partial objects."""
    docs = load_docs(folder)
    kz = None
    for d in docs.get("kustomization.yaml", []):
        check_schema(c, where + "kustomization.yaml", d)
        kz = d
    c.check(isinstance(kz, dict) and kz.get("kind") == "Component",
            f"{where}kustomization.yaml is a kustomize Component (an overlay in docker/k8s "
            f"cannot include docker/k8s)")
    kz = kz or {}
    patch_files = {p.get("path") for p in kz.get("patches", []) or [] if p.get("path")}
    for name, ds in docs.items():
        if name == "kustomization.yaml":
            continue
        for d in ds:
            if name in patch_files:
                errs = k8s_schema.validate(d, partial=True)
                c.check(not errs, f"{where}{name}: patch of {d.get('kind')} "
                        f"{get(d, 'metadata.name')} fits the schema" +
                        "".join(f"\n          {e}" for e in errs))
            else:
                check_schema(c, where + name, d)
            if d.get("kind") in NAMESPACED:
                c.check(get(d, "metadata.namespace") == "sparkrelay",
                        f"{where}{name}: {d.get('kind')} {get(d, 'metadata.name')} in "
                        f"namespace sparkrelay")
    res = set(kz.get("resources", []) or [])
    expected = set(docs) - {"kustomization.yaml"} - patch_files
    c.check(res == expected, f"{where}kustomization.yaml lists every manifest (missing "
                             f"{sorted(expected - res)}, extra {sorted(res - expected)})")
    c.check(all(p in docs for p in patch_files),
            f"{where}kustomization.yaml: every patch file exists ({sorted(patch_files)})")
    return kz, docs


def patched_ds(docs, kz):
    for p in kz.get("patches", []) or []:
        for d in docs.get(p.get("path"), []):
            if d.get("kind") == "DaemonSet":
                return d
    return {}


def check_fleet(c, k8s, base):
    """The fleet component against itself, the base and the relay's configuration.
    base: facts of the base manifests (see main)."""
    fdir = os.path.join(k8s, "fleet")
    if not c.check(os.path.isdir(fdir), "docker/k8s/fleet exists (the relay fleet)"):
        return
    kz, docs = load_component(c, "fleet/", fdir)
    objs = [d for n, ds in docs.items() if n != "kustomization.yaml" for d in ds]
    patch_files = {p.get("path") for p in kz.get("patches", []) or []}
    plain = [d for n, ds in docs.items() if n not in patch_files and
             n != "kustomization.yaml" for d in ds]
    gen = generated_secrets(kz)
    for g in kz.get("secretGenerator", []) or []:
        for f in g.get("files", []) or []:
            src = f.split("=", 1)[1] if "=" in f else f
            c.check(src.startswith("secrets/") and "/" not in src[len("secrets/"):],
                    f"fleet secretGenerator {g.get('name')}: {src} is in fleet/secrets/")
    try:
        with open(os.path.join(fdir, "secrets", ".gitignore")) as f:
            ignored = f.read().split("\n")
    except OSError:
        ignored = []
    c.check("*" in ignored, "fleet/secrets/.gitignore keeps every key out of git")
    c.check(not any(d.get("kind") == "Secret" for d in objs),
            "no Secret in the fleet manifests: the component makes them from files")

    # relay.json of the fleet: the base's plus relay.fleet, nothing else.
    cms = [d for n in patch_files for d in docs.get(n, []) if d.get("kind") == "ConfigMap"]
    cm = cms[0] if len(cms) == 1 else {}
    c.check(len(cms) == 1 and get(cm, "metadata.name") == base["cm_name"],
            f"fleet patches the relay ConfigMap {base['cm_name']} once")
    try:
        fconf = json.loads(get(cm, "data", {}).get("relay.json") or "")
    except ValueError as e:
        fconf = {}
        c.check(False, f"fleet relay.json is JSON ({e})")
    frelay = (fconf.get("relay") or {}) if isinstance(fconf, dict) else {}
    fleet = frelay.get("fleet") if isinstance(frelay.get("fleet"), dict) else {}
    rest = json.loads(json.dumps(fconf)) if isinstance(fconf, dict) else {}
    (rest.get("relay") or {}).pop("fleet", None)
    c.check(bool(fleet) and rest == base["conf"],
            "fleet relay.json is the base's configmap.yaml relay.json plus relay.fleet "
            "(edit both)")
    c.check(set(fleet) == FLEET_KEYS,
            f"relay.fleet sets {sorted(FLEET_KEYS)} (id and peer_advertise come per node "
            f"from the environment; has {sorted(fleet)})")
    ttl = fleet.get("ttl_s")
    c.check(isinstance(ttl, int) and not isinstance(ttl, bool) and 1 <= ttl <= 300,
            f"relay.fleet.ttl_s {ttl!r} is a number of seconds (1..300)")
    prefix = fleet.get("prefix")
    c.check(isinstance(prefix, str) and prefix.startswith("/") and prefix.endswith("/"),
            f"relay.fleet.prefix {prefix!r} is a key prefix of its own (/.../)")
    peer_port = port_of(fleet.get("peer_listen"))
    used = {"relay.listen": base["listen_port"], "relay.admin.listen": base["admin_port"],
            "relay.metrics.listen": base["metrics_port"]}
    c.check(peer_port is not None and peer_port not in used.values() and
            not base["pool_min"] <= peer_port <= base["pool_max"],
            f"relay.fleet.peer_listen port {peer_port} is none of {used} and outside the "
            f"pool {base['pool_min']}-{base['pool_max']}")

    # etcd: the StatefulSet, its Services and PDB.
    sts_all = [d for d in plain if d.get("kind") == "StatefulSet"]
    c.check(len(sts_all) == 1, f"fleet has one etcd StatefulSet (found {len(sts_all)})")
    sts = sts_all[0] if sts_all else {}
    ssel = get(sts, "spec.selector.matchLabels", {}) or {}
    spod = get(sts, "spec.template.spec", {}) or {}
    slabels = get(sts, "spec.template.metadata.labels", {}) or {}
    sname = get(sts, "metadata.name", "")
    c.check(bool(ssel) and all(slabels.get(k) == v for k, v in ssel.items()),
            "etcd StatefulSet selector matches its pod labels")
    c.check(not all(base["pod_labels"].get(k) == v for k, v in ssel.items()) and
            not all(slabels.get(k) == v for k, v in base["sel"].items()),
            "etcd and relay selectors do not select each other's pods")
    replicas = get(sts, "spec.replicas", 1)
    c.check(isinstance(replicas, int) and replicas >= 3 and replicas % 2 == 1,
            f"etcd has an odd number of members, at least 3 ({replicas})")
    c.check(get(sts, "spec.podManagementPolicy") == "Parallel",
            "etcd members start in parallel (OrderedReady waits for a quorum that the "
            "members not started yet cannot give)")
    terms = get(spod, "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution",
                []) or []
    c.check(any(t.get("topologyKey") == "kubernetes.io/hostname" and
                get(t, "labelSelector.matchLabels") and
                all(slabels.get(k) == v for k, v in
                    get(t, "labelSelector.matchLabels", {}).items()) for t in terms),
            "etcd members on different nodes (required pod anti-affinity on "
            "kubernetes.io/hostname selecting the members)")
    ectrs = spod.get("containers", []) or []
    c.check(len(ectrs) == 1, "etcd pod has one container")
    ectr = ectrs[0] if ectrs else {}
    c.check(pinned(ectr.get("image")), f"etcd image {ectr.get('image')} is pinned by version")
    c.check(spod.get("automountServiceAccountToken") is False and
            get(spod, "securityContext.runAsNonRoot") is True and
            get(ectr, "securityContext.allowPrivilegeEscalation") is False and
            get(ectr, "securityContext.readOnlyRootFilesystem") is True,
            "etcd: no service account token, non-root, no privilege escalation, read-only "
            "root")
    c.check(bool(get(ectr, "resources.requests.cpu")) and
            bool(get(ectr, "resources.requests.memory")) and
            bool(get(ectr, "resources.limits.memory")),
            "etcd: cpu/memory requests and a memory limit")
    check_pod_refs(c, "etcd StatefulSet", spod, set(gen), claim_names(sts))
    fl = flags_of((ectr.get("command") or [])[1:] + (ectr.get("args") or []))
    # A relay restarts a watch silent for watch_idle_ms: etcd must speak sooner.
    m = re.fullmatch(r"([0-9]+)s", str(fl.get("experimental-watch-progress-notify-interval")))
    idle = fleet.get("watch_idle_ms")
    # etcd skips the notification after an event and adds up to 10 %.
    c.check(bool(m) and isinstance(idle, int) and idle >= 2500 * int(m.group(1)),
            f"etcd --experimental-watch-progress-notify-interval "
            f"({fl.get('experimental-watch-progress-notify-interval')}) is in seconds and "
            f"at most relay.fleet.watch_idle_ms / 2.5 ({idle} ms)")
    for flag in ("client-cert-auth", "peer-client-cert-auth"):
        c.check(fl.get(flag) in (True, "true"), f"etcd --{flag}: client certificates "
                "required")
    emounts = {m.get("name"): m.get("mountPath") for m in ectr.get("volumeMounts", []) or []}
    evols = {v.get("name"): v for v in spod.get("volumes", []) or []}
    for flag in ("trusted-ca-file", "cert-file", "key-file", "peer-trusted-ca-file",
                 "peer-cert-file", "peer-key-file"):
        path = fl.get(flag)
        ok = False
        if isinstance(path, str):
            for vname, mpath in emounts.items():
                secret = get(evols.get(vname, {}), "secret.secretName")
                if secret and posixpath.dirname(path) == mpath:
                    ok = posixpath.basename(path) in gen.get(secret, set())
        c.check(ok, f"etcd --{flag} {path} is a key of a mounted Secret the fleet "
                    f"component makes")
    scheme_c, _, cport = url_parts((fl.get("listen-client-urls") or "").split(",")[0])
    scheme_p, _, pport = url_parts((fl.get("listen-peer-urls") or "").split(",")[0])
    c.check(scheme_c == "https" and scheme_p == "https",
            "etcd listens with TLS on the client and peer ports (https)")
    cports = {p.get("name"): p.get("containerPort") for p in ectr.get("ports", []) or []}
    c.check(cports.get("client") == cport and cports.get("peer") == pport,
            f"etcd container ports client/peer {cports.get('client')}/{cports.get('peer')} "
            f"== --listen-client-urls/--listen-peer-urls {cport}/{pport}")
    data_dir = fl.get("data-dir") or ""
    vct = [get(v, "metadata.name") for v in get(sts, "spec.volumeClaimTemplates", []) or []]
    c.check(any(emounts.get(n) and (data_dir == emounts[n] or
                                    data_dir.startswith(emounts[n].rstrip("/") + "/"))
                for n in vct),
            f"etcd --data-dir {data_dir} is on a persistent volume (volumeClaimTemplates)")

    services = {get(d, "metadata.name"): d for d in plain if d.get("kind") == "Service"}
    peer_svc = services.get(get(sts, "spec.serviceName"), {})
    c.check(bool(peer_svc) and get(peer_svc, "spec.clusterIP") == "None" and
            get(peer_svc, "spec.publishNotReadyAddresses") is True,
            f"etcd serviceName {get(sts, 'spec.serviceName')!r} is a headless Service "
            f"that publishes members before they are ready (they must find each other)")
    for n, svc in services.items():
        s = get(svc, "spec.selector", {}) or {}
        if all(slabels.get(k) == v for k, v in s.items()) and s:
            for p in get(svc, "spec.ports", []) or []:
                c.check(p.get("targetPort", p.get("port")) in (cport, pport, "client", "peer"),
                        f"Service {n}: port {p.get('port')} reaches an etcd port")
    psp = {p.get("name"): p for p in get(peer_svc, "spec.ports", []) or []}
    want = {f"{sname}-{i}": f"https://{sname}-{i}.{get(peer_svc, 'metadata.name')}."
            f"sparkrelay.svc:{get(psp.get('peer', {}), 'port')}"
            for i in range(replicas if isinstance(replicas, int) else 0)}
    have = dict(m.split("=", 1) for m in (fl.get("initial-cluster") or "").split(",")
                if "=" in m)
    c.check(have == want and get(psp.get("peer", {}), "port") == pport,
            f"etcd --initial-cluster names each of the {replicas} members at its peer "
            f"Service name and port {pport} ({sorted(have)})")
    c.check(all(url_parts(u.replace("$(POD_NAME)", f"{sname}-0"))[0] == "https"
                for u in ((fl.get("advertise-client-urls") or "x").split(",") +
                          (fl.get("initial-advertise-peer-urls") or "x").split(","))),
            "etcd advertises https URLs")

    pdbs = [d for d in plain if d.get("kind") == "PodDisruptionBudget" and
            get(d, "spec.selector.matchLabels") == ssel]
    quorum = replicas // 2 + 1 if isinstance(replicas, int) else 0
    pdb = pdbs[0] if len(pdbs) == 1 else {}
    mu, ma = get(pdb, "spec.maxUnavailable"), get(pdb, "spec.minAvailable")
    c.check((isinstance(mu, int) and 1 <= mu <= replicas - quorum) or
            (isinstance(ma, int) and ma >= quorum),
            f"etcd PodDisruptionBudget keeps a quorum of {quorum} (maxUnavailable {mu}, "
            f"minAvailable {ma})")

    # relay.fleet.etcd: the client Service, TLS, its port.
    endpoints = fleet.get("etcd")
    c.check(isinstance(endpoints, list) and len(endpoints) >= 1,
            "relay.fleet.etcd lists at least one endpoint")
    for u in endpoints if isinstance(endpoints, list) else []:
        scheme, host, port = url_parts(u)
        labels = (host or "").split(".")
        svc = services.get(labels[0], {}) if len(labels) >= 3 else {}
        sport = [p for p in get(svc, "spec.ports", []) or [] if p.get("port") == port]
        c.check(scheme == "https" and labels[1:] in (["sparkrelay", "svc"],
                                                     ["sparkrelay", "svc", "cluster",
                                                      "local"]) and
                bool(svc) and get(svc, "spec.clusterIP") != "None" and
                all(slabels.get(k) == v for k, v in get(svc, "spec.selector", {}).items())
                and len(sport) == 1 and sport[0].get("targetPort", port) in (cport, "client"),
                f"relay.fleet.etcd {u} is https to the etcd client Service, on the port "
                f"that reaches etcd's client port {cport}")

    # The relay DaemonSet patch: per-node settings and the Secrets where relay.fleet
    # names them.
    ds = patched_ds(docs, kz)
    dpod = get(ds, "spec.template.spec", {}) or {}
    dctrs = [ct for ct in dpod.get("containers", []) or [] if ct.get("name") == "relay"]
    c.check(len(dctrs) == 1 and get(ds, "metadata.name") == base["ds_name"],
            f"fleet patches the relay container of DaemonSet {base['ds_name']}")
    dctr = dctrs[0] if dctrs else {}
    env = {e.get("name"): e for e in dctr.get("env", []) or []}
    dmounts = {m.get("name"): m.get("mountPath") for m in dctr.get("volumeMounts", []) or []}
    dvols = {v.get("name"): v for v in dpod.get("volumes", []) or []}
    for what, path in (("secret_file", fleet.get("secret_file")),
                       ("etcd_ca", fleet.get("etcd_ca")), ("etcd_cert", fleet.get("etcd_cert")),
                       ("etcd_key", fleet.get("etcd_key"))):
        ok = False
        for vname, mpath in dmounts.items():
            secret = get(dvols.get(vname, {}), "secret.secretName")
            if secret and isinstance(path, str) and posixpath.dirname(path) == mpath:
                ok = posixpath.basename(path) in gen.get(secret, set())
        c.check(ok, f"relay.fleet.{what} {path} is a key of a Secret the fleet component "
                    f"makes, mounted in the relay container")
    c.check(get(env.get("SPARKRELAY_RELAY_FLEET_ID", {}), "valueFrom.fieldRef.fieldPath") ==
            "spec.nodeName", "relay.fleet.id is the node name (a restarted relay is the same "
                             "member)")
    padv = get(env.get("SPARKRELAY_RELAY_FLEET_PEER_ADVERTISE", {}), "value") or ""
    node_ip = get(env.get("NODE_IP", {}), "valueFrom.fieldRef.fieldPath")
    names = [e.get("name") for e in dctr.get("env", []) or []]
    c.check(padv.startswith("$(NODE_IP):") and node_ip == "status.hostIP" and
            names.index("NODE_IP") < names.index("SPARKRELAY_RELAY_FLEET_PEER_ADVERTISE"),
            f"relay.fleet.peer_advertise {padv!r} is the node IP ($(NODE_IP), defined "
            f"before it)")
    c.check(port_of(padv) == peer_port,
            f"relay.fleet.peer_advertise port {port_of(padv)} == peer_listen port {peer_port}")
    adv = env.get("SPARKRELAY_RELAY_POOL_ADVERTISE", {})
    relays = [d for d in plain if d.get("kind") == "Service" and
              get(d, "spec.selector") and
              all(base["pod_labels"].get(k) == v for k, v in get(d, "spec.selector").items())]
    c.check(len(relays) == 1, f"fleet has one Service selecting the relay pods "
                              f"({[get(d, 'metadata.name') for d in relays]})")
    rsvc = relays[0] if relays else {}
    rname = get(rsvc, "metadata.name")
    c.check(get(rsvc, "spec.clusterIP") == "None" and
            get(rsvc, "spec.publishNotReadyAddresses") is False,
            f"Service {rname} is headless and publishes Ready relays only "
            f"(publishNotReadyAddresses: false: a draining relay drops out)")
    c.check(adv.get("value") in (f"{rname}.sparkrelay.svc.cluster.local",
                                 f"{rname}.sparkrelay.svc") and "valueFrom" in adv and
            adv["valueFrom"] is None,
            f"the fleet advertises the headless Service {rname} as spark.driver.host "
            f"(SPARKRELAY_RELAY_POOL_ADVERTISE {adv.get('value')!r}, the node IP removed)")

    # NetworkPolicies: the peer port between relays; etcd's ports.
    nps = [d for d in plain if d.get("kind") == "NetworkPolicy"]

    def opened(selector_labels, port):
        rules = []
        for np_ in nps:
            sel = get(np_, "spec.podSelector.matchLabels", {}) or {}
            if sel and all(selector_labels.get(k) == v for k, v in sel.items()):
                for rule in get(np_, "spec.ingress", []) or []:
                    if any(p.get("port") == port and "endPort" not in p
                           for p in rule.get("ports", []) or []):
                        rules.append(rule)
        return rules

    c.check(bool(opened(base["pod_labels"], peer_port)),
            f"a NetworkPolicy opens the relays' peer port {peer_port} "
            f"(relay.fleet.peer_listen)")
    c.check(bool(opened(slabels, cport)), f"a NetworkPolicy opens etcd's client port {cport}")
    prules = opened(slabels, pport)
    c.check(bool(prules) and all(
        f.get("podSelector") and not f.get("namespaceSelector") and not f.get("ipBlock") and
        all(slabels.get(k) == v for k, v in get(f, "podSelector.matchLabels", {}).items())
        for r in prules for f in r.get("from", []) or [{}]),
        f"a NetworkPolicy opens etcd's peer port {pport} to the members only")

    check_node_local(c, fdir)


def check_node_local(c, fdir):
    ndir = os.path.join(fdir, "node-local")
    if not c.check(os.path.isdir(ndir), "docker/k8s/fleet/node-local exists"):
        return
    kz, docs = load_component(c, "fleet/node-local/", ndir)
    ds = patched_ds(docs, kz)
    pod = get(ds, "spec.template.spec", {}) or {}
    relay = [ct for ct in pod.get("containers", []) or [] if ct.get("name") == "relay"]
    env = {e.get("name"): e.get("value") for ct in relay for e in ct.get("env", []) or []}
    addr = env.get("SPARKRELAY_RELAY_POOL_ADVERTISE")
    m = LINK_LOCAL.fullmatch(addr or "")
    c.check(m is not None and all(0 <= int(x) <= 255 for x in m.groups()) and
            m.groups() not in (("169", "254"), ("169", "253")),
            f"node-local: spark.driver.host {addr!r} is a link-local address "
            f"(169.254.0.0/16, not EC2's 169.254.169.x)")
    c.check(env.get("SPARKRELAY_RELAY_POOL_BIND") == addr,
            f"node-local: the pool binds the advertised address "
            f"({env.get('SPARKRELAY_RELAY_POOL_BIND')!r} == {addr!r})")
    inits = [ct for ct in pod.get("initContainers", []) or []
             if "type dummy" in " ".join(ct.get("command", []) or [])]
    c.check(len(inits) == 1, "node-local: an init container creates the dummy interface")
    ic = inits[0] if inits else {}
    script = " ".join(ic.get("command", []) or [])
    m = re.search(r"ip link add (\S+) type dummy", script)
    dev = m.group(1) if m else None
    c.check(dev is not None and f"ip addr add {addr}/32 dev {dev}" in script and
            f"ip link set {dev} up" in script,
            f"node-local: the init container puts {addr}/32 on dummy interface {dev} and "
            f"sets it up")
    c.check(re.search(r"ip link show \S+ .*\|\| ip link add", script) is not None,
            "node-local: the init container is idempotent (a restarted pod finds the "
            "interface)")
    caps = get(ic, "securityContext.capabilities", {}) or {}
    c.check("ALL" in (caps.get("drop") or []) and set(caps.get("add") or []) == {"NET_ADMIN"}
            and not get(ic, "securityContext.privileged", False) and
            get(ic, "securityContext.allowPrivilegeEscalation") is False,
            "node-local: the init container holds NET_ADMIN and nothing else")
    c.check(pinned(ic.get("image")), f"node-local: image {ic.get('image')} is pinned")
    c.check(bool(get(ic, "resources.limits.memory")),
            "node-local: the init container has a memory limit")


def doc_sidecar_spec(root):
    """The YAML block of docs/operations.md that holds the native sidecar (the one
    with 'restartPolicy: Always'), parsed; None when there is none."""
    with open(os.path.join(root, "docs", "operations.md")) as f:
        text = f.read()
    for block in re.findall(r"^```yaml\n(.*?)^```", text, re.M | re.S):
        if "restartPolicy: Always" in block:
            return yaml.safe_load(block)
    return None


def check_doc_sidecar(c, root, image, health_path, version):
    doc = doc_sidecar_spec(root)
    if not c.check(isinstance(doc, dict) and isinstance(doc.get("spec"), dict),
                   "docs/operations.md has the in-pod sidecar example (a pod 'spec:')"):
        return
    pod = doc["spec"]
    check_schema(c, "docs/operations.md", {"apiVersion": "v1", "kind": "Pod",
                                           "metadata": {"name": "notebook"}, "spec": pod})
    check_pod_refs(c, "docs/operations.md sidecar example", pod, None)
    sidecars = [ct for ct in pod.get("initContainers", []) or []
                if ct.get("restartPolicy") == "Always"]
    if not c.check(len(sidecars) == 1 and (sidecars[0].get("args") or [])[:1] == ["tunnel"],
                   "docs sidecar: one native sidecar (init container, restartPolicy "
                   "Always) runs 'tunnel'"):
        return
    sc = sidecars[0]
    c.check(sc.get("image") == image, f"docs sidecar: image {sc.get('image')} is {image}")
    cmd = get(sc, "startupProbe.exec.command", [])
    c.check(cmd == [health_path],
            f"docs sidecar: startupProbe runs {health_path} (passes once a lease is held), "
            f"so the notebook starts after the lease")
    c.check(bool(get(sc, "resources.requests.cpu")) and
            bool(get(sc, "resources.requests.memory")) and
            bool(get(sc, "resources.limits.memory")),
            "docs sidecar: cpu/memory requests and a memory limit")
    sec = sc.get("securityContext", {}) or {}
    c.check(sec.get("allowPrivilegeEscalation") is False and
            sec.get("readOnlyRootFilesystem") is True and sec.get("runAsNonRoot") is True and
            "ALL" in (get(sec, "capabilities.drop") or []),
            "docs sidecar: non-root, no privilege escalation, read-only root, no capabilities")
    env = {e.get("name"): e.get("value") for e in sc.get("env", []) or []}
    mounts = {m.get("mountPath"): m.get("name") for m in sc.get("volumeMounts", []) or []}
    for k in ("SPARKRELAY_TUNNEL_SPARK_CONF", "SPARKRELAY_TUNNEL_SPARK_JSON",
              "SPARKRELAY_TUNNEL_STATE_FILE", "SPARKRELAY_TUNNEL_TLS_CA"):
        c.check(env.get(k) is not None and posixpath.dirname(env[k]) in mounts,
                f"docs sidecar: {k} {env.get(k)} is in a mounted volume")
    conf_dir = posixpath.dirname(env.get("SPARKRELAY_TUNNEL_SPARK_CONF") or "")
    shared = mounts.get(conf_dir)
    nb = [ct for ct in pod.get("containers", []) or []
          if any(m.get("name") == shared for m in ct.get("volumeMounts", []) or [])]
    nb_env = {e.get("name"): e.get("value") for ct in nb for e in ct.get("env", []) or []}
    c.check(bool(nb) and nb_env.get("SPARK_CONF_DIR") == posixpath.join(
        posixpath.dirname(conf_dir), posixpath.basename(conf_dir)) and all(
        m.get("mountPath") == conf_dir for ct in nb for m in ct.get("volumeMounts", [])
        if m.get("name") == shared),
        f"docs sidecar: the notebook container mounts {conf_dir} and reads it as "
        f"SPARK_CONF_DIR")
    print(f"  info  docs sidecar example checked (image tag {version})")


# What `kubectl kustomize` renders: the base alone, with the fleet, and with the fleet
# and the node-local address (components added to a copy of the base's kustomization).
RENDER_VARIANTS = (("docker/k8s", []), ("docker/k8s + fleet", ["fleet"]),
                   ("docker/k8s + fleet + fleet/node-local", ["fleet", "fleet/node-local"]))


def stand_in_secrets(work, kz_dir):
    """Files for the secretGenerator of kz_dir's kustomization, where none exist."""
    path = os.path.join(kz_dir, "kustomization.yaml")
    if not os.path.exists(path):
        return
    with open(path) as f:
        kz = yaml.safe_load(f) or {}
    for g in kz.get("secretGenerator", []) or []:
        for spec in g.get("files", []) or []:
            src = spec.split("=", 1)[1] if "=" in spec else spec
            out = os.path.join(kz_dir, src)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            if not os.path.exists(out):
                with open(out, "w") as f:
                    f.write("stand-in for CI\n")


def render(c, k8s, mode):
    """`kubectl kustomize` of a copy of the folder with stand-in secret files, for each
    of RENDER_VARIANTS whose components exist; the rendered objects are checked against
    the schema and their Secret references, and the fleet's patches for what they
    must have done."""
    kubectl = shutil.which("kubectl")
    if mode == "off" or (kubectl is None and mode == "auto"):
        print("  info  kubectl kustomize skipped" +
              (" (no kubectl)" if kubectl is None and mode == "auto" else ""))
        return
    if not c.check(kubectl is not None, "kubectl is installed (kubectl kustomize)"):
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "k8s")
        shutil.copytree(k8s, work)
        with open(os.path.join(work, "kustomization.yaml")) as f:
            kz = yaml.safe_load(f)
        for name, comps in RENDER_VARIANTS:
            if not all(os.path.isdir(os.path.join(work, comp)) for comp in comps):
                continue
            for d in [work] + [os.path.join(work, comp) for comp in comps]:
                stand_in_secrets(work, d)
            kz_v = dict(kz)
            if comps:
                kz_v["components"] = comps
            with open(os.path.join(work, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(kz_v, f)
            try:
                p = subprocess.run([kubectl, "kustomize", work], capture_output=True,
                                   text=True, timeout=120)
            except subprocess.TimeoutExpired:
                c.check(False, f"kubectl kustomize {name} finished within 120 s")
                continue
            if not c.check(p.returncode == 0, f"kubectl kustomize {name} renders" +
                           (f": {p.stderr.strip()[:500]}" if p.returncode else "")):
                continue
            check_rendered(c, name, [d for d in yaml.safe_load_all(p.stdout)
                                     if d is not None], comps)


def check_rendered(c, name, out, comps):
    for d in out:
        check_schema(c, f"rendered {name}", d)
    secrets = {get(d, "metadata.name") for d in out if d.get("kind") == "Secret"}
    for d in out:
        pod = get(d, "spec.template.spec")
        if pod:
            check_pod_refs(c, f"rendered {name}: {d.get('kind')} {get(d, 'metadata.name')}",
                           pod, secrets, claim_names(d))
    kinds = sorted({d.get("kind") for d in out})
    print(f"  info  kubectl kustomize {name}: {len(out)} objects: {', '.join(kinds)}")
    if not comps:
        return
    ds = [d for d in out if d.get("kind") == "DaemonSet"]
    relay = [ct for d in ds for ct in get(d, "spec.template.spec.containers", []) or []
             if ct.get("name") == "relay"]
    env = [e for ct in relay for e in ct.get("env", []) or []]
    names = [e.get("name") for e in env]
    c.check(len(relay) == 1 and len(names) == len(set(names)),
            f"rendered {name}: the relay container has each variable once")
    adv = [e for e in env if e.get("name") == "SPARKRELAY_RELAY_POOL_ADVERTISE"]
    c.check(len(adv) == 1 and "valueFrom" not in adv[0] and adv[0].get("value"),
            f"rendered {name}: spark.driver.host is the fleet's "
            f"({adv[0].get('value') if adv else None!r}), not the node IP")
    cms = [d for d in out if d.get("kind") == "ConfigMap" and "relay.json" in
           (d.get("data") or {})]
    try:
        fleet = get(json.loads(cms[0]["data"]["relay.json"]), "relay.fleet") if cms else None
    except ValueError:
        fleet = None
    c.check(isinstance(fleet, dict), f"rendered {name}: relay.json has relay.fleet")
    if "fleet/node-local" in comps:
        binds = [e.get("value") for e in env if e.get("name") == "SPARKRELAY_RELAY_POOL_BIND"]
        inits = [ct.get("name") for d in ds
                 for ct in get(d, "spec.template.spec.initContainers", []) or []]
        c.check(binds == [adv[0].get("value") if adv else None] and
                "node-local-address" in inits and "handover-dir" in inits,
                f"rendered {name}: the pool binds and advertises the node-local address, "
                f"and both init containers run ({inits})")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
