#!/usr/bin/python3
"""Checks that deploy/ and the Dockerfiles agree with what gd-server really is.

The manifests name flags, ports, probe targets, metric names and HTTP paths that are defined
in C++ (server/server_main.cc, server/metrics.cc); nothing else ties them together, so a
renamed flag or metric would only show up as a broken rollout or an HPA that never scales.
This test reads those definitions from the sources, renders both overlays (with
`kubectl kustomize` when kubectl is there, else with the small renderer below, and checks the
two agree when both can run) and checks every manifest against them. It then breaks the
rendered manifests on purpose, one way at a time, and requires each break to be caught.

  /usr/bin/python3 tests/deploy/deploy_test.py [--repo DIR] [--no-kubectl]

Prints one line per check; exits 1 if any failed. Needs PyYAML (Debian: python3-yaml, which
python3-torch from scripts/install-deps.sh pulls in).
"""

import argparse
import copy
import math
import os
import re
import shutil
import subprocess
import sys

import yaml

OVERLAYS = ("cpu", "gpu")
HEADLESS_SERVICE = "gd-server-headless"  # the name docs/deploy.md gives clients
# gd-server gives gRPC's own Shutdown this long after the drain (server_main.cc: drain_s + 2).
SERVER_SHUTDOWN_SLACK_S = 2
VALID_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")  # --device help: "cpu, cuda or cuda:N"
VALID_DTYPES = {"fp32", "fp16", "bf16"}  # --dtype help: "fp32, fp16 or bf16"


class Report:
    """Collects check results; prints them unless quiet (the break-it-on-purpose runs)."""

    def __init__(self, quiet=False):
        self.quiet = quiet
        self.failures = []
        self.passed = 0

    def check(self, condition, what, detail=""):
        if condition:
            self.passed += 1
            if not self.quiet:
                print(f"ok    {what}")
        else:
            self.failures.append(f"{what}: {detail}" if detail else what)
            if not self.quiet:
                print(f"FAIL  {what}" + (f": {detail}" if detail else ""))
        return condition


# ---- What the server defines ----------------------------------------------------------------


class Server:
    """Flags (name -> default as written in C++), metric names and HTTP paths of gd-server."""

    def __init__(self, repo):
        # gd-server's flags: its own, and the allocator's it shares with the other binaries.
        main = read(repo, "server/server_main.cc") + read(repo, "core/engine/allocator.cc")
        bundled = read(repo, "core/io/bundled_model.cc")
        metrics = read(repo, "server/metrics.cc")
        # ABSL_FLAG(type, name, default, help): the type has no comma in this file.
        self.flags = {
            m.group(1): m.group(2).strip()
            for m in re.finditer(r"ABSL_FLAG\(\s*[^,]+,\s*(\w+),\s*([^,]+),", main)
        }
        # Header(&out, "name", "type", "help") writes every metric's HELP/TYPE lines.
        self.metric_help = {
            m.group(1): m.group(2)
            for m in re.finditer(r'Header\(&out,\s*"(\w+)",\s*"\w+",\s*"([^"]*)"', metrics)
        }
        self.http_paths = set(re.findall(r'path == "(/[\w/]*)"', metrics))
        # Where FindBundledModelDir looks for the bundled model (absolute candidates only).
        self.bundled_model_dirs = set(re.findall(r'"(/[\w/.-]*models/fashion-mnist)"', bundled))
        if not self.flags or not self.metric_help or not self.http_paths:
            sys.exit("deploy_test: cannot parse flags or metrics from server/*.cc; "
                     "update the regexes in deploy_test.py")

    def default_int(self, flag):
        return int(self.flags[flag])

    def default_str(self, flag):
        return self.flags[flag].strip('"')

    def autoscaling_metric(self):
        """The metric whose HELP calls it the autoscaling signal."""
        names = [n for n, h in self.metric_help.items() if "autoscaling" in h]
        return names[0] if len(names) == 1 else None


def read(repo, path):
    with open(os.path.join(repo, path), encoding="utf-8") as f:
        return f.read()


# ---- Rendering the overlays -------------------------------------------------------------------


def kubectl_with_kustomize():
    """kubectl's path if it has the kustomize subcommand (kubectl >= 1.14), else None."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    probe = subprocess.run([kubectl, "kustomize", "--help"], capture_output=True, text=True)
    return kubectl if probe.returncode == 0 else None


def render_with_kubectl(overlay_dir):
    result = subprocess.run(["kubectl", "kustomize", overlay_dir], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay_dir}: {result.stderr.strip()}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def render_simply(directory):
    """What kustomize does with the features deploy/ uses: resources, images, JSON 6902 patches.

    Anything else in a kustomization.yaml is an error here, so that this renderer never
    silently disagrees with kustomize."""
    with open(os.path.join(directory, "kustomization.yaml"), encoding="utf-8") as f:
        kustomization = yaml.safe_load(f)
    known = {"apiVersion", "kind", "resources", "images", "patches"}
    unknown = set(kustomization) - known
    if unknown:
        raise RuntimeError(f"{directory}: the fallback renderer does not know {sorted(unknown)}")
    docs = []
    for resource in kustomization.get("resources", []):
        path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(path):
            docs += render_simply(path)
        else:
            with open(path, encoding="utf-8") as f:
                docs += [d for d in yaml.safe_load_all(f) if d]
    for image in kustomization.get("images", []):
        for container in all_containers(docs):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f'{image.get("newName", name)}:{image.get("newTag", tag)}'
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"]
                   and d["metadata"]["name"] == target["name"]]
        if not matched:
            raise RuntimeError(f"{directory}: patch target {target} matches nothing")
        for doc in matched:
            for op in yaml.safe_load(patch["patch"]):
                apply_json_patch(doc, op)
    return docs


def apply_json_patch(doc, op):
    """RFC 6902 add / replace / remove on a JSON pointer ("-" appends to a list)."""
    keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].lstrip("/").split("/")]
    parent = doc
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if op["op"] in ("add", "replace"):
        if isinstance(parent, list):
            if last == "-":
                parent.append(op["value"])
            elif op["op"] == "add":
                parent.insert(int(last), op["value"])
            else:
                parent[int(last)] = op["value"]
        else:
            if op["op"] == "replace" and last not in parent:
                raise RuntimeError(f"replace of a missing path {op['path']}")
            parent[last] = op["value"]
    elif op["op"] == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise RuntimeError(f"the fallback renderer does not know op {op['op']}")


def by_kind_and_name(docs):
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


# ---- Reading the manifests --------------------------------------------------------------------


def all_containers(docs):
    for d in docs:
        if d.get("kind") == "Deployment":
            yield from d["spec"]["template"]["spec"]["containers"]


def parse_args(args):
    """--name=value and --name value pairs of a container's args, as gd-server's absl sees them."""
    parsed, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            parsed.append((name, value if (eq or value) else None))
        i += 1
    return parsed


def cpu_cores(quantity):
    """A Kubernetes CPU quantity ("4", "500m", 2) in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def expand(value, container):
    """Resolves $(VAR) as the kubelet does, for the env sources the Deployment uses.

    Returns (value, how) where how says where it came from; value is None if unresolvable."""
    m = re.fullmatch(r"\$\((\w+)\)", value or "")
    if not m:
        return value, "literal"
    for env in container.get("env", []):
        if env["name"] != m.group(1):
            continue
        if "value" in env:
            return env["value"], f"env {env['name']}"
        ref = env.get("valueFrom", {}).get("resourceFieldRef")
        if ref and ref.get("resource") == "limits.cpu":
            limit = container.get("resources", {}).get("limits", {}).get("cpu")
            if limit is None:
                return None, "limits.cpu of a container without a CPU limit (= node's cores)"
            divisor = cpu_cores(ref.get("divisor", "1"))
            # The downward API rounds up to whole divisors.
            return str(math.ceil(cpu_cores(limit) / divisor)), f"env {env['name']} = limits.cpu"
    return None, f"$({m.group(1)}) is not defined in env"


def port_number(service_port, container):
    """The container port a Service port's targetPort resolves to."""
    target = service_port.get("targetPort", service_port["port"])
    if isinstance(target, int):
        return target
    for p in container.get("ports", []):
        if p.get("name") == target:
            return p["containerPort"]
    return None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---- The checks -----------------------------------------------------------------------------


def check_overlay(overlay, docs, server, adapter_rules, report):
    """Everything one rendered overlay must satisfy. Returns the effective ports."""
    c = lambda cond, what, detail="": report.check(cond, f"[{overlay}] {what}", detail)
    objects = by_kind_and_name(docs)
    deployment = objects.get(("Deployment", "gd-server"))
    if not c(deployment is not None, "renders a Deployment gd-server"):
        return None
    pod = deployment["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    containers = [x for x in pod["spec"]["containers"] if x["name"] == "gd-server"]
    if not c(len(containers) == 1, "the Deployment has one container gd-server"):
        return None
    container = containers[0]
    args = parse_args(container.get("args", []))
    flags = dict(args)

    # Flags: each one passed exists, once, with a value that expands.
    unknown = [n for n, _ in args if n not in server.flags]
    c(not unknown, "every --flag in args is an ABSL_FLAG of server_main.cc",
      f"unknown: {unknown}")
    repeated = sorted({n for n, _ in args if [a for a, _ in args].count(n) > 1})
    c(not repeated, "no flag is passed twice (absl keeps the last, silently)", f"{repeated}")

    def effective(flag):
        if flag in flags:
            return expand(flags[flag], container)[0]
        return server.default_str(flag)

    grpc_port = int(effective("port"))
    metrics_port = int(effective("metrics_port"))
    drain_s = int(effective("drain_timeout_s"))
    c(effective("host") == "0.0.0.0",
      "--host listens on all interfaces (probes and Services come from outside the pod)",
      f"--host={effective('host')}")
    c(effective("metrics_host") == "0.0.0.0", "--metrics_host listens on all interfaces",
      f"--metrics_host={effective('metrics_host')}")
    c(metrics_port > 0, "the metrics endpoint is on (--metrics_port > 0)")

    # Ports.
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    c(ports.get("grpc") == grpc_port, f"containerPort grpc = --port ({grpc_port})",
      f"containerPort grpc = {ports.get('grpc')}")
    c(ports.get("metrics") == metrics_port,
      f"containerPort metrics = --metrics_port ({metrics_port})",
      f"containerPort metrics = {ports.get('metrics')}")

    # Probes: gRPC health of the whole server, on the gRPC port.
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind) or {}
        grpc = probe.get("grpc")
        c(grpc is not None and grpc.get("port") == grpc_port and grpc.get("service", "") == "",
          f"{kind} is a gRPC health probe of service \"\" on port {grpc_port}", f"{probe}")
    startup = container.get("startupProbe") or {}
    budget_s = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    c(budget_s >= 120, "the startupProbe allows >= 2 minutes to load models", f"{budget_s} s")

    # Termination: the kubelet's grace period must cover preStop + the server's drain.
    prestop = (container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command"))
    prestop_s = int(prestop[1]) if prestop and prestop[0] == "sleep" else 0
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    needed = prestop_s + drain_s + SERVER_SHUTDOWN_SLACK_S
    c(grace > needed,
      f"terminationGracePeriodSeconds ({grace}) > preStop {prestop_s} s + --drain_timeout_s "
      f"{drain_s} + {SERVER_SHUTDOWN_SLACK_S} s", f"needs more than {needed}")

    # Threads follow the CPU limit.
    limits = container.get("resources", {}).get("limits", {})
    threads, how = ("0", "default")
    if "threads" in flags:
        threads, how = expand(flags["threads"], container)
    if "cpu" in limits:
        want = str(math.ceil(cpu_cores(limits["cpu"])))
        c(threads == want, f"--threads = the CPU limit ({limits['cpu']} -> {want})",
          f"--threads resolves to {threads} ({how})")
    else:
        c(threads in (None, "0"), "no CPU limit: --threads is left to all cores", f"{threads}")

    # Device and precision.
    device, dtype = effective("device"), effective("dtype")
    c(bool(VALID_DEVICE.match(device or "")), f"--device={device} is cpu, cuda or cuda:N")
    c(dtype in VALID_DTYPES, f"--dtype={dtype} is one of {sorted(VALID_DTYPES)}")
    gpus = int(limits.get("nvidia.com/gpu", 0))
    if overlay == "gpu":
        c(gpus >= 1, "limits request nvidia.com/gpu", f"limits: {limits}")
        c(device.startswith("cuda"), "passes --device cuda", f"--device={device}")
    else:
        c(gpus == 0 and device == "cpu", "no GPU requested and --device cpu",
          f"gpus={gpus} device={device}")
    c(container["image"].endswith(f"-{overlay}"), f"the image tag is the {overlay} build",
      container["image"])

    # Non-root, as the image's USER.
    pod_sc, ctr_sc = pod["spec"].get("securityContext", {}), container.get("securityContext", {})
    c(ctr_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, "runAsNonRoot")
    uid = ctr_sc.get("runAsUser", pod_sc.get("runAsUser"))
    c(uid not in (None, 0), "runAsUser is a non-root uid", f"{uid}")

    # Services.
    services = [d for d in docs if d["kind"] == "Service"]
    for svc in services:
        c(selects(svc["spec"].get("selector"), pod_labels),
          f"Service {svc['metadata']['name']} selects the gd-server pods")
    cluster = [s for s in services if s["spec"].get("clusterIP") != "None"]
    headless = objects.get(("Service", HEADLESS_SERVICE))
    if c(len(cluster) == 1, "one ClusterIP Service"):
        svc_ports = {p["name"]: p for p in cluster[0]["spec"]["ports"]}
        grpc_sp, metrics_sp = svc_ports.get("grpc"), svc_ports.get("metrics")
        c(grpc_sp is not None and port_number(grpc_sp, container) == grpc_port
          and grpc_sp.get("appProtocol") == "grpc",
          "ClusterIP Service port grpc reaches --port, appProtocol grpc", f"{grpc_sp}")
        c(metrics_sp is not None and port_number(metrics_sp, container) == metrics_port,
          "ClusterIP Service port metrics reaches --metrics_port", f"{metrics_sp}")
    if c(headless is not None and headless["spec"].get("clusterIP") == "None",
         f"headless Service {HEADLESS_SERVICE} (clusterIP: None)"):
        grpc_sp = {p["name"]: p for p in headless["spec"]["ports"]}.get("grpc")
        c(grpc_sp is not None and port_number(grpc_sp, container) == grpc_port,
          "headless Service port grpc reaches --port", f"{grpc_sp}")

    # PodDisruptionBudget.
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    c(len(pdbs) == 1 and selects(pdbs[0]["spec"]["selector"].get("matchLabels"), pod_labels),
      "a PodDisruptionBudget selects the pods")

    # HPA on the server's queue gauge.
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    hpa_metric = None
    if c(len(hpas) == 1 and hpas[0]["apiVersion"] == "autoscaling/v2", "one autoscaling/v2 HPA"):
        spec = hpas[0]["spec"]
        ref = spec["scaleTargetRef"]
        c(ref["kind"] == "Deployment" and ref["name"] == "gd-server", "the HPA scales gd-server")
        c(2 <= spec.get("minReplicas", 1) <= spec["maxReplicas"],
          "2 <= minReplicas <= maxReplicas (a rollout or drain never leaves no replica)")
        pod_metrics = [m["pods"] for m in spec.get("metrics", []) if m["type"] == "Pods"]
        if c(len(pod_metrics) == 1, "the HPA has one Pods metric"):
            hpa_metric = pod_metrics[0]["metric"]["name"]
            target = pod_metrics[0]["target"]
            c(hpa_metric in server.metric_help, f"HPA metric {hpa_metric} is exposed by metrics.cc")
            c(hpa_metric == server.autoscaling_metric(),
              "HPA metric is the one metrics.cc calls the autoscaling signal",
              f"{hpa_metric} vs {server.autoscaling_metric()}")
            max_queue = int(effective("max_queue_images"))
            c(target["type"] == "AverageValue"
              and 0 < float(target["averageValue"]) < max_queue,
              f"HPA target is an average value below --max_queue_images ({max_queue}), "
              "so pods are added before callers are refused", f"{target}")

    # ServiceMonitor -> the metrics port and path.
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if c(len(monitors) == 1 and monitors[0]["apiVersion"] == "monitoring.coreos.com/v1",
         "one ServiceMonitor (monitoring.coreos.com/v1)"):
        spec = monitors[0]["spec"]
        chosen = [s for s in services
                  if selects(spec["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
        c(len(chosen) == 1, "the ServiceMonitor selects exactly one Service (no double scrape)",
          f"{[s['metadata']['name'] for s in chosen]}")
        for endpoint in spec.get("endpoints", []):
            path = endpoint.get("path", "/metrics")
            c(path == "/metrics" and path in server.http_paths,
              f"ServiceMonitor path {path} is served by metrics.cc", f"{sorted(server.http_paths)}")
            named = {p["name"]: p for s in chosen for p in s["spec"]["ports"]}
            sp = named.get(endpoint.get("port"))
            c(sp is not None and port_number(sp, container) == metrics_port,
              f"ServiceMonitor port {endpoint.get('port')} reaches --metrics_port ({metrics_port})")

    # Prometheus Adapter: turns the scraped series into the HPA's pods metric.
    rules = adapter_rules.get("rules", {})
    rules = rules.get("custom", []) if isinstance(rules, dict) else rules
    exposing = [r for r in rules
                if r.get("name", {}).get("as", hpa_metric) == hpa_metric
                and re.search(r"\b%s\b" % re.escape(str(hpa_metric)), r.get("seriesQuery", ""))]
    if c(len(exposing) == 1, f"one adapter rule: seriesQuery names {hpa_metric}, exposed as it"):
        overrides = exposing[0].get("resources", {}).get("overrides", {})
        c({"pod", "namespace"} <= set(overrides), "the adapter rule maps pod and namespace labels")
    return {"grpc": grpc_port, "metrics": metrics_port, "uid": uid}


def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.partition(" ")
        lines.append((word.upper(), rest.strip()))
        current = ""
    return lines


def check_dockerfile(path, repo, server, ports, report, cpu_variant):
    c = lambda cond, what, detail="": report.check(cond, f"[{path}] {what}", detail)
    text = read(repo, path)
    instructions = dockerfile_instructions(text)
    of = lambda word: [rest for w, rest in instructions if w == word]
    c(len(of("FROM")) >= 2, "multi-stage (a build and a runtime stage)")
    exposed = {int(p.split("/")[0]) for rest in of("EXPOSE") for p in rest.split()}
    c(exposed == {ports["grpc"], ports["metrics"]},
      f"EXPOSE {ports['grpc']} {ports['metrics']} (the Deployment's ports)", f"EXPOSE {exposed}")
    copied = {os.path.basename(tok) for rest in of("COPY") for tok in rest.split()}
    c({"gd-server", "gd"} <= copied, "COPYs the binaries gd-server and gd")
    model_copies = [rest.split()[-1] for rest in of("COPY") if "models/fashion-mnist" in rest]
    c(bool(model_copies) and model_copies[0] in server.bundled_model_dirs,
      "COPYs the bundled model where gd-server looks for it", f"{model_copies}")
    entry = " ".join(of("ENTRYPOINT"))
    c("gd-server" in entry, "ENTRYPOINT runs gd-server", entry)
    health = " ".join(of("HEALTHCHECK"))
    c(re.search(r'"gd",\s*"health",\s*"--server",\s*"127\.0\.0\.1:%d"' % ports["grpc"], health)
      is not None, f"HEALTHCHECK runs gd health --server 127.0.0.1:{ports['grpc']}", health)
    users = of("USER")
    uid = users[-1].split(":")[0] if users else "0"
    c(uid.isdigit() and int(uid) == ports["uid"],
      f"USER is numeric and the Deployment's runAsUser ({ports['uid']})", f"USER {uid}")
    if cpu_variant:
        c(any("scripts/install-deps.sh" in rest for rest in of("RUN")),
          "the build stage runs scripts/install-deps.sh (the script CI uses)")
        c(re.search(r"\bdebian:12\b", text) is not None and "debian:12-slim" in text,
          "builds on debian:12, runs on debian:12-slim")


def check_dockerignore(repo, report):
    patterns = [l.strip().rstrip("/") for l in read(repo, ".dockerignore").splitlines()
                if l.strip() and not l.startswith("#")]
    for needed in ("build", ".git", "runs"):
        report.check(needed in patterns, f"[.dockerignore] excludes {needed}")
    for kept in ("models", "scripts", "core", "server", "client", "proto", "CMakeLists.txt"):
        report.check(kept not in patterns and f"{kept}/*" not in patterns,
                     f"[.dockerignore] keeps {kept} (the images COPY it)")


# ---- Breaking it on purpose -------------------------------------------------------------------


def deployment_container(docs):
    return next(all_containers(docs))


def mutations():
    """(what, function that breaks a rendered overlay in place); each must make a check fail."""

    def container_port(docs):
        for p in deployment_container(docs)["ports"]:
            if p["name"] == "grpc":
                p["containerPort"] += 1

    def unknown_flag(docs):
        deployment_container(docs)["args"].append("--no_such_flag=1")

    def short_grace(docs):
        d = by_kind_and_name(docs)[("Deployment", "gd-server")]
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30

    def probe_port(docs):
        deployment_container(docs)["readinessProbe"]["grpc"]["port"] = 9090

    def hpa_metric(docs):
        hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "gd_queue_image"

    def monitor_path(docs):
        monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
        monitor["spec"]["endpoints"][0]["path"] = "/metric"

    def no_gpu(docs):
        deployment_container(docs)["resources"]["limits"].pop("nvidia.com/gpu", None)

    def threads_literal(docs):
        args = deployment_container(docs)["args"]
        args[:] = [a for a in args if not a.startswith("--threads")] + ["--threads=64"]

    return [("containerPort grpc off by one", container_port),
            ("an unknown flag", unknown_flag),
            ("terminationGracePeriodSeconds = 30", short_grace),
            ("readinessProbe on the metrics port", probe_port),
            ("HPA metric misspelt", hpa_metric),
            ("ServiceMonitor path /metric", monitor_path),
            ("gpu overlay without nvidia.com/gpu", no_gpu),
            ("--threads not the CPU limit", threads_literal)]


# ---- Main ------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")))
    parser.add_argument("--no-kubectl", action="store_true",
                        help="render with the built-in renderer only")
    options = parser.parse_args()
    repo = options.repo
    report = Report()
    server = Server(repo)
    print(f"gd-server: {len(server.flags)} flags, {len(server.metric_help)} metrics, "
          f"HTTP paths {sorted(server.http_paths)}")
    with open(os.path.join(repo, "deploy/prometheus-adapter-rules.yaml"), encoding="utf-8") as f:
        adapter_rules = yaml.safe_load(f)

    kubectl = None if options.no_kubectl else kubectl_with_kustomize()
    print(f"rendering with kubectl kustomize ({kubectl})" if kubectl
          else "rendering with the built-in renderer")
    rendered, ports = {}, {}
    for overlay in OVERLAYS:
        directory = os.path.join(repo, "deploy", "overlays", overlay)
        try:
            simple = render_simply(directory)
            docs = render_with_kubectl(directory) if kubectl else simple
        except (RuntimeError, OSError, KeyError, yaml.YAMLError) as error:
            report.check(False, f"[{overlay}] renders", str(error))
            continue
        if kubectl:
            report.check(by_kind_and_name(docs) == by_kind_and_name(simple),
                         f"[{overlay}] the built-in renderer agrees with kubectl kustomize",
                         "fix render_simply() so that machines without kubectl check the same")
        rendered[overlay] = docs
        ports[overlay] = check_overlay(overlay, docs, server, adapter_rules, report)

    base = ports.get("cpu")
    if base:
        report.check(ports.get("gpu") == base, "both overlays use the same ports and uid",
                     f"{ports}")
        check_dockerfile("Dockerfile", repo, server, base, report, cpu_variant=True)
        check_dockerfile("Dockerfile.gpu", repo, server, base, report, cpu_variant=False)
    check_dockerignore(repo, report)

    # Each deliberate break must be caught by at least one check.
    for what, breaks in mutations():
        overlay = "gpu" if what.startswith("gpu") else "cpu"
        if overlay not in rendered:
            continue
        docs = copy.deepcopy(rendered[overlay])
        breaks(docs)
        quiet = Report(quiet=True)
        check_overlay(overlay, docs, server, adapter_rules, quiet)
        report.check(bool(quiet.failures), f"[self-test] breaking it ({what}) is caught",
                     "no check failed")
        if quiet.failures:
            print(f"        caught by: {quiet.failures[0]}")

    print(f"\n{report.passed} checks passed, {len(report.failures)} failed")
    for failure in report.failures:
        print(f"  FAILED: {failure}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
