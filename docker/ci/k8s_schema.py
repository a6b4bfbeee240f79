"""The part of the Kubernetes API that docker/k8s and the docs' examples use, as a
small schema, so that CI catches offline what `kubectl apply --dry-run=server` would:
a misspelt or misplaced field, a wrong type, a missing required field, a value
outside an enumeration.

Only the fields used are described; every other field is refused as unknown, as the
API server does with strict field validation. A field used for the first time must be
added here, from the API reference of the kind (kubernetes.io/docs/reference/
kubernetes-api; monitoring.coreos.com for PodMonitor/ServiceMonitor). Standard library
only.

  errors = validate(doc)    # [] when the object fits; else "path: problem" strings
"""
import re

# ---- schema nodes --------------------------------------------------------------------


class Node:
    def check(self, value, path, errs):
        raise NotImplementedError


# Set by validate(partial=True) for kustomize patches: a patch names only what it
# changes (required fields may be absent) and null deletes a field.
_PARTIAL = [False]


class Str(Node):
    def __init__(self, pattern=None, enum=None, max_len=None):
        self.pattern = re.compile(pattern) if pattern else None
        self.enum = enum
        self.max_len = max_len

    def check(self, value, path, errs):
        if not isinstance(value, str):
            errs.append(f"{path}: must be a string (got {type(value).__name__})")
            return
        if self.enum is not None and value not in self.enum:
            errs.append(f"{path}: must be one of {', '.join(self.enum)} (got {value!r})")
        if self.pattern and not self.pattern.fullmatch(value):
            errs.append(f"{path}: {value!r} does not match {self.pattern.pattern}")
        if self.max_len is not None and len(value) > self.max_len:
            errs.append(f"{path}: longer than {self.max_len} characters")


class Int(Node):
    def __init__(self, lo=None, hi=None):
        self.lo, self.hi = lo, hi

    def check(self, value, path, errs):
        if isinstance(value, bool) or not isinstance(value, int):
            errs.append(f"{path}: must be an integer (got {type(value).__name__})")
            return
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            errs.append(f"{path}: {value} is outside {self.lo}..{self.hi}")


class Bool(Node):
    def check(self, value, path, errs):
        if not isinstance(value, bool):
            errs.append(f"{path}: must be true or false (got {value!r})")


class Const(Node):
    def __init__(self, value):
        self.value = value

    def check(self, value, path, errs):
        if value != self.value:
            errs.append(f"{path}: must be {self.value!r} (got {value!r})")


class IntOrStr(Node):
    """An IntOrString: an integer, or a string (a percentage or a port name)."""

    def __init__(self, pattern=r"[0-9]+%|[a-z0-9]([-a-z0-9]*[a-z0-9])?"):
        self.pattern = re.compile(pattern)

    def check(self, value, path, errs):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            errs.append(f"{path}: must be an integer or a string (got {type(value).__name__})")
        elif isinstance(value, str) and not self.pattern.fullmatch(value):
            errs.append(f"{path}: {value!r} does not match {self.pattern.pattern}")


class Quantity(Node):
    """A resource quantity: 250m, 256Mi, 2Gi, 1, 0.5."""
    RE = re.compile(r"[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")

    def check(self, value, path, errs):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            errs.append(f"{path}: must be a quantity (got {type(value).__name__})")
        elif isinstance(value, str) and not self.RE.fullmatch(value):
            errs.append(f"{path}: {value!r} is not a quantity (e.g. 250m, 256Mi)")


class List(Node):
    def __init__(self, item, min_len=0):
        self.item, self.min_len = item, min_len

    def check(self, value, path, errs):
        if not isinstance(value, list):
            errs.append(f"{path}: must be a list (got {type(value).__name__})")
            return
        if len(value) < self.min_len:
            errs.append(f"{path}: needs at least {self.min_len} item(s)")
        for i, v in enumerate(value):
            self.item.check(v, f"{path}[{i}]", errs)


class Map(Node):
    """A map with free keys (labels, data): keys match key_pattern, values one node."""

    def __init__(self, value, key_pattern=None):
        self.value = value
        self.key = re.compile(key_pattern) if key_pattern else None

    def check(self, value, path, errs):
        if not isinstance(value, dict):
            errs.append(f"{path}: must be a map (got {type(value).__name__})")
            return
        for k, v in value.items():
            if not isinstance(k, str) or (self.key and not self.key.fullmatch(k)):
                errs.append(f"{path}: key {k!r} is not allowed here")
                continue
            self.value.check(v, f"{path}.{k}", errs)


class Obj(Node):
    """A structure: known fields only; `required` must be present; `one_of` groups of
    which exactly one is set; `at_most_one` groups of which at most one is set."""

    def __init__(self, fields, required=(), one_of=(), at_most_one=()):
        self.fields = fields
        self.required = required
        self.one_of = one_of
        self.at_most_one = at_most_one

    def check(self, value, path, errs):
        if not isinstance(value, dict):
            errs.append(f"{path}: must be a map (got {type(value).__name__})")
            return
        for k, v in value.items():
            if k not in self.fields:
                errs.append(f"{path}: unknown field {k!r}")
                continue
            if v is None and _PARTIAL[0]:
                continue
            self.fields[k].check(v, f"{path}.{k}" if path else k, errs)
        if _PARTIAL[0]:
            return
        for k in self.required:
            if k not in value:
                errs.append(f"{path or '(top)'}: missing required field {k!r}")
        for group in self.one_of:
            n = sum(1 for k in group if k in value)
            if n != 1:
                errs.append(f"{path}: exactly one of {', '.join(group)} must be set (found {n})")
        for group in self.at_most_one:
            n = sum(1 for k in group if k in value)
            if n > 1:
                errs.append(f"{path}: at most one of {', '.join(group)} may be set")


class Any(Node):
    """Free-form, for fields whose inside we do not use (relabelings)."""

    def check(self, value, path, errs):
        pass


# ---- shared pieces -------------------------------------------------------------------

DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
LABEL_KEY = r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_VALUE = Str(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
PORT = Int(1, 65535)
PORT_NAME = Str(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", max_len=15)
PROTOCOL = Str(enum=("TCP", "UDP", "SCTP"))
STRINGS = List(Str())


def meta(namespaced):
    fields = {
        "name": Str(DNS_SUBDOMAIN, max_len=253),
        "labels": Map(LABEL_VALUE, LABEL_KEY),
        "annotations": Map(Str(), LABEL_KEY),
    }
    if namespaced:
        fields["namespace"] = Str(DNS_LABEL, max_len=63)
    return Obj(fields, required=("name",))


LABEL_SELECTOR = Obj({
    "matchLabels": Map(LABEL_VALUE, LABEL_KEY),
    "matchExpressions": List(Obj({
        "key": Str(LABEL_KEY),
        "operator": Str(enum=("In", "NotIn", "Exists", "DoesNotExist")),
        "values": STRINGS,
    }, required=("key", "operator"))),
})

KEY_SELECTOR = Obj({"name": Str(DNS_SUBDOMAIN), "key": Str(), "optional": Bool()},
                   required=("key",))

ENV_VAR = Obj({
    "name": Str(r"[-._a-zA-Z][-._a-zA-Z0-9]*"),
    "value": Str(),
    "valueFrom": Obj({
        "fieldRef": Obj({"fieldPath": Str(), "apiVersion": Str()}, required=("fieldPath",)),
        "secretKeyRef": KEY_SELECTOR,
        "configMapKeyRef": KEY_SELECTOR,
        "resourceFieldRef": Obj({"resource": Str(), "containerName": Str(),
                                 "divisor": Quantity()}, required=("resource",)),
    }, one_of=(("fieldRef", "secretKeyRef", "configMapKeyRef", "resourceFieldRef"),)),
}, required=("name",), at_most_one=(("value", "valueFrom"),))

PROBE = Obj({
    "exec": Obj({"command": List(Str(), min_len=1)}, required=("command",)),
    "httpGet": Obj({"path": Str(), "port": IntOrStr(), "host": Str(),
                    "scheme": Str(enum=("HTTP", "HTTPS"))}, required=("port",)),
    "tcpSocket": Obj({"port": IntOrStr(), "host": Str()}, required=("port",)),
    "initialDelaySeconds": Int(0),
    "periodSeconds": Int(1),
    "timeoutSeconds": Int(1),
    "successThreshold": Int(1),
    "failureThreshold": Int(1),
    "terminationGracePeriodSeconds": Int(1),
}, one_of=(("exec", "httpGet", "tcpSocket"),))

CAPABILITIES = Obj({"add": STRINGS, "drop": STRINGS})
SECCOMP = Obj({"type": Str(enum=("RuntimeDefault", "Localhost", "Unconfined")),
               "localhostProfile": Str()}, required=("type",))

CONTAINER_SECURITY = Obj({
    "allowPrivilegeEscalation": Bool(),
    "readOnlyRootFilesystem": Bool(),
    "privileged": Bool(),
    "runAsNonRoot": Bool(),
    "runAsUser": Int(0),
    "runAsGroup": Int(0),
    "capabilities": CAPABILITIES,
    "seccompProfile": SECCOMP,
})

RESOURCES = Obj({"requests": Map(Quantity()), "limits": Map(Quantity())})


def container(init):
    fields = {
        "name": Str(DNS_LABEL, max_len=63),
        "image": Str(r"\S+"),
        "imagePullPolicy": Str(enum=("Always", "IfNotPresent", "Never")),
        "command": STRINGS,
        "args": STRINGS,
        "workingDir": Str(),
        "env": List(ENV_VAR),
        "ports": List(Obj({
            "name": PORT_NAME,
            "containerPort": PORT,
            "hostPort": PORT,
            "hostIP": Str(),
            "protocol": PROTOCOL,
        }, required=("containerPort",))),
        "readinessProbe": PROBE,
        "livenessProbe": PROBE,
        "startupProbe": PROBE,
        "resources": RESOURCES,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": List(Obj({
            "name": Str(DNS_LABEL),
            "mountPath": Str(r"/.*"),
            "readOnly": Bool(),
            "subPath": Str(),
        }, required=("name", "mountPath"))),
    }
    if init:
        # Only "Always" exists: it makes the init container a native sidecar (1.29+).
        fields["restartPolicy"] = Str(enum=("Always",))
    return Obj(fields, required=("name", "image"))


KEY_TO_PATH = List(Obj({"key": Str(), "path": Str(), "mode": Int(0, 0o777)},
                       required=("key", "path")))

VOLUME = Obj({
    "name": Str(DNS_LABEL, max_len=63),
    "configMap": Obj({"name": Str(DNS_SUBDOMAIN), "items": KEY_TO_PATH,
                      "defaultMode": Int(0, 0o777), "optional": Bool()}),
    "secret": Obj({"secretName": Str(DNS_SUBDOMAIN), "items": KEY_TO_PATH,
                   "defaultMode": Int(0, 0o777), "optional": Bool()}),
    "emptyDir": Obj({"medium": Str(enum=("", "Memory")), "sizeLimit": Quantity()}),
    "hostPath": Obj({"path": Str(r"/.*"),
                     "type": Str(enum=("", "DirectoryOrCreate", "Directory", "FileOrCreate",
                                       "File", "Socket", "CharDevice", "BlockDevice"))},
                    required=("path",)),
}, required=("name",), one_of=(("configMap", "secret", "emptyDir", "hostPath"),))

AFFINITY_TERM = Obj({
    "topologyKey": Str(LABEL_KEY),
    "labelSelector": LABEL_SELECTOR,
    "namespaces": STRINGS,
    "namespaceSelector": LABEL_SELECTOR,
}, required=("topologyKey",))

POD_AFFINITY = Obj({
    "requiredDuringSchedulingIgnoredDuringExecution": List(AFFINITY_TERM),
    "preferredDuringSchedulingIgnoredDuringExecution": List(Obj({
        "weight": Int(1, 100),
        "podAffinityTerm": AFFINITY_TERM,
    }, required=("weight", "podAffinityTerm"))),
})

AFFINITY = Obj({"podAffinity": POD_AFFINITY, "podAntiAffinity": POD_AFFINITY})

TOPOLOGY_SPREAD = Obj({
    "maxSkew": Int(1),
    "topologyKey": Str(LABEL_KEY),
    "whenUnsatisfiable": Str(enum=("DoNotSchedule", "ScheduleAnyway")),
    "labelSelector": LABEL_SELECTOR,
    "minDomains": Int(1),
}, required=("maxSkew", "topologyKey", "whenUnsatisfiable"))

TOLERATION = Obj({
    "key": Str(LABEL_KEY),
    "operator": Str(enum=("Exists", "Equal")),
    "value": Str(),
    "effect": Str(enum=("NoSchedule", "PreferNoSchedule", "NoExecute")),
    "tolerationSeconds": Int(),
})

POD_SPEC = Obj({
    "serviceAccountName": Str(DNS_SUBDOMAIN),
    "automountServiceAccountToken": Bool(),
    "hostNetwork": Bool(),
    "dnsPolicy": Str(enum=("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")),
    "terminationGracePeriodSeconds": Int(0),
    "restartPolicy": Str(enum=("Always", "OnFailure", "Never")),
    "priorityClassName": Str(DNS_SUBDOMAIN),
    "nodeSelector": Map(Str(), LABEL_KEY),
    "tolerations": List(TOLERATION),
    "affinity": AFFINITY,
    "topologySpreadConstraints": List(TOPOLOGY_SPREAD),
    "securityContext": Obj({
        "runAsNonRoot": Bool(),
        "runAsUser": Int(0),
        "runAsGroup": Int(0),
        "fsGroup": Int(0),
        "fsGroupChangePolicy": Str(enum=("OnRootMismatch", "Always")),
        "supplementalGroups": List(Int(0)),
        "seccompProfile": SECCOMP,
    }),
    "initContainers": List(container(init=True)),
    "containers": List(container(init=False), min_len=1),
    "volumes": List(VOLUME),
}, required=("containers",))

POD_TEMPLATE = Obj({
    "metadata": Obj({"labels": Map(LABEL_VALUE, LABEL_KEY),
                     "annotations": Map(Str(), LABEL_KEY)}),
    "spec": POD_SPEC,
}, required=("spec",))

SCRAPE_ENDPOINT = {
    "port": PORT_NAME,
    "targetPort": IntOrStr(),
    "path": Str(r"/.*"),
    "scheme": Str(enum=("http", "https")),
    "interval": Str(r"([0-9]+(ms|s|m|h))+"),
    "scrapeTimeout": Str(r"([0-9]+(ms|s|m|h))+"),
    "honorLabels": Bool(),
    "authorization": Obj({"type": Str(), "credentials": KEY_SELECTOR}),
    "bearerTokenSecret": KEY_SELECTOR,
    "tlsConfig": Any(),
    "relabelings": List(Any()),
    "metricRelabelings": List(Any()),
}

NAMESPACE_SELECTOR = Obj({"any": Bool(), "matchNames": STRINGS})


def kind(api_version, kind_name, namespaced, spec=None, required_spec=True, **top):
    fields = {"apiVersion": Const(api_version), "kind": Const(kind_name),
              "metadata": meta(namespaced)}
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        fields["spec"] = spec
        if required_spec:
            required.append("spec")
    fields.update(top)
    return Obj(fields, required=tuple(required))


# The fields of a Kustomization and a Component (kustomize.config.k8s.io) used here.
KUSTOMIZE_FIELDS = {
    "namespace": Str(DNS_LABEL),
    "resources": List(Str()),
    "images": List(Obj({"name": Str(), "newName": Str(), "newTag": Str(),
                        "digest": Str()}, required=("name",))),
    "secretGenerator": List(Obj({
        "name": Str(DNS_SUBDOMAIN),
        "namespace": Str(DNS_LABEL),
        "type": Str(),
        "files": List(Str(r"([-._a-zA-Z0-9]+=)?[^=]+")),
        "literals": List(Str(r"[-._a-zA-Z0-9]+=.*")),
        "envs": STRINGS,
        "behavior": Str(enum=("create", "replace", "merge")),
        "options": Obj({"disableNameSuffixHash": Bool(), "immutable": Bool(),
                        "labels": Map(LABEL_VALUE, LABEL_KEY),
                        "annotations": Map(Str(), LABEL_KEY)}),
    }, required=("name",))),
    "generatorOptions": Obj({"disableNameSuffixHash": Bool(), "immutable": Bool(),
                             "labels": Map(LABEL_VALUE, LABEL_KEY),
                             "annotations": Map(Str(), LABEL_KEY)}),
    "components": List(Str()),
    "patches": List(Obj({"path": Str(), "patch": Str(),
                         "target": Obj({"group": Str(), "version": Str(), "kind": Str(),
                                        "name": Str(), "namespace": Str(),
                                        "labelSelector": Str()})},
                        one_of=(("path", "patch"),))),
}

KINDS = {
    "Namespace": kind("v1", "Namespace", False),
    "ServiceAccount": kind("v1", "ServiceAccount", True,
                           automountServiceAccountToken=Bool(),
                           imagePullSecrets=List(Obj({"name": Str()}))),
    "ConfigMap": kind("v1", "ConfigMap", True, data=Map(Str(), r"[-._a-zA-Z0-9]+"),
                      immutable=Bool()),
    "Secret": kind("v1", "Secret", True, type=Str(), data=Map(Str(), r"[-._a-zA-Z0-9]+"),
                   stringData=Map(Str(), r"[-._a-zA-Z0-9]+"), immutable=Bool()),
    "Service": kind("v1", "Service", True, Obj({
        "type": Str(enum=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")),
        "clusterIP": Str(),
        "publishNotReadyAddresses": Bool(),
        "selector": Map(LABEL_VALUE, LABEL_KEY),
        "ports": List(Obj({"name": PORT_NAME, "port": PORT, "targetPort": IntOrStr(),
                           "protocol": PROTOCOL}, required=("port",)), min_len=1),
    })),
    "Pod": kind("v1", "Pod", True, POD_SPEC),
    "DaemonSet": kind("apps/v1", "DaemonSet", True, Obj({
        "selector": LABEL_SELECTOR,
        "updateStrategy": Obj({
            "type": Str(enum=("RollingUpdate", "OnDelete")),
            "rollingUpdate": Obj({"maxUnavailable": IntOrStr(), "maxSurge": IntOrStr()}),
        }),
        "minReadySeconds": Int(0),
        "revisionHistoryLimit": Int(0),
        "template": POD_TEMPLATE,
    }, required=("selector", "template"))),
    "StatefulSet": kind("apps/v1", "StatefulSet", True, Obj({
        "replicas": Int(0),
        "selector": LABEL_SELECTOR,
        "serviceName": Str(DNS_LABEL, max_len=63),
        "podManagementPolicy": Str(enum=("OrderedReady", "Parallel")),
        "updateStrategy": Obj({
            "type": Str(enum=("RollingUpdate", "OnDelete")),
            "rollingUpdate": Obj({"partition": Int(0), "maxUnavailable": IntOrStr()}),
        }),
        "minReadySeconds": Int(0),
        "revisionHistoryLimit": Int(0),
        "template": POD_TEMPLATE,
        "volumeClaimTemplates": List(Obj({
            "metadata": Obj({"name": Str(DNS_LABEL, max_len=63),
                             "labels": Map(LABEL_VALUE, LABEL_KEY),
                             "annotations": Map(Str(), LABEL_KEY)}, required=("name",)),
            "spec": Obj({
                "accessModes": List(Str(enum=("ReadWriteOnce", "ReadOnlyMany",
                                              "ReadWriteMany", "ReadWriteOncePod")),
                                    min_len=1),
                "storageClassName": Str(),
                "volumeMode": Str(enum=("Filesystem", "Block")),
                "resources": Obj({"requests": Map(Quantity()), "limits": Map(Quantity())},
                                 required=("requests",)),
            }, required=("accessModes", "resources")),
        }, required=("metadata", "spec"))),
        "persistentVolumeClaimRetentionPolicy": Obj({
            "whenDeleted": Str(enum=("Retain", "Delete")),
            "whenScaled": Str(enum=("Retain", "Delete")),
        }),
    }, required=("selector", "template", "serviceName"))),
    "PodDisruptionBudget": kind("policy/v1", "PodDisruptionBudget", True, Obj({
        "selector": LABEL_SELECTOR,
        "maxUnavailable": IntOrStr(),
        "minAvailable": IntOrStr(),
        "unhealthyPodEvictionPolicy": Str(enum=("IfHealthyBudget", "AlwaysAllow")),
    }, at_most_one=(("maxUnavailable", "minAvailable"),))),
    "NetworkPolicy": kind("networking.k8s.io/v1", "NetworkPolicy", True, Obj({
        "podSelector": LABEL_SELECTOR,
        "policyTypes": List(Str(enum=("Ingress", "Egress"))),
        "ingress": List(Obj({
            "from": List(Obj({
                "podSelector": LABEL_SELECTOR,
                "namespaceSelector": LABEL_SELECTOR,
                "ipBlock": Obj({"cidr": Str(r"[0-9a-fA-F.:]+/[0-9]+"), "except": STRINGS},
                               required=("cidr",)),
            })),
            "ports": List(Obj({"protocol": PROTOCOL, "port": IntOrStr(), "endPort": PORT})),
        })),
    }, required=("podSelector",))),
    "PriorityClass": kind("scheduling.k8s.io/v1", "PriorityClass", False,
                          value=Int(-2147483648, 1000000000), globalDefault=Bool(),
                          description=Str(),
                          preemptionPolicy=Str(enum=("PreemptLowerPriority", "Never"))),
    "PodMonitor": kind("monitoring.coreos.com/v1", "PodMonitor", True, Obj({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": NAMESPACE_SELECTOR,
        "jobLabel": Str(),
        "podTargetLabels": STRINGS,
        "podMetricsEndpoints": List(Obj(SCRAPE_ENDPOINT), min_len=1),
    }, required=("selector", "podMetricsEndpoints"))),
    "ServiceMonitor": kind("monitoring.coreos.com/v1", "ServiceMonitor", True, Obj({
        "selector": LABEL_SELECTOR,
        "namespaceSelector": NAMESPACE_SELECTOR,
        "jobLabel": Str(),
        "targetLabels": STRINGS,
        "endpoints": List(Obj(dict(SCRAPE_ENDPOINT, targetPort=IntOrStr())), min_len=1),
    }, required=("selector", "endpoints"))),
    "Kustomization": Obj(dict(KUSTOMIZE_FIELDS, **{
        "apiVersion": Const("kustomize.config.k8s.io/v1beta1"),
        "kind": Const("Kustomization"),
    }), required=("apiVersion", "kind")),
    "Component": Obj(dict(KUSTOMIZE_FIELDS, **{
        "apiVersion": Const("kustomize.config.k8s.io/v1alpha1"),
        "kind": Const("Component"),
    }), required=("apiVersion", "kind")),
}

def validate(doc, partial=False):
    """Errors of one object (a parsed YAML document) against KINDS; [] when none.
    partial: a kustomize patch (required fields may be absent, null deletes)."""
    if not isinstance(doc, dict):
        return ["(top): not a map"]
    k = doc.get("kind")
    if k not in KINDS:
        return [f"kind {k!r} has no schema here (add it to docker/ci/k8s_schema.py)"]
    errs = []
    _PARTIAL[0] = partial
    try:
        KINDS[k].check(doc, "", errs)
    finally:
        _PARTIAL[0] = False
    return errs
