#!/usr/bin/env python3
"""Offline check of every Kubernetes manifest in deploy/k8s.

Renders each kustomization (deploy/k8s/base and every overlay) with `kustomize build` or
`kubectl kustomize`, then validates every rendered resource strictly (unknown fields are errors):

- built-in kinds against the Kubernetes OpenAPI schemas shipped by the `kubernetes-validate`
  package, for each Kubernetes version in --kubernetes-version (default: 1.30, the oldest we
  support, and the newest the package knows);
- custom resources (RabbitmqCluster, cert-manager's Issuer and Certificate) against the schemas
  in deploy/k8s/schemas/, which reuse the Kubernetes definitions for embedded types;
- a kind with no schema at all is an error, not a warning.

Every error is printed; the exit code is 0 when all is valid, 1 when something is not, 2 when
rendering failed and 3 when a tool is missing (the message says how to install it).

    python3 deploy/k8s/validate.py                   # every kustomization
    python3 deploy/k8s/validate.py deploy/k8s/base   # one
    python3 deploy/k8s/validate.py --render-dir /tmp/out   # also keep the rendered YAML

The deploy_files test runs this, so `cargo test --workspace` fails when a manifest breaks.
"""

import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
INSTALL = "bash deploy/k8s/install-tools.sh (or: pip install kubernetes-validate)"

try:
    import jsonschema
    import yaml
    from referencing import Registry, Resource
    import importlib_resources
    import kubernetes_validate.utils as kv
except ImportError as e:  # pragma: no cover - exercised when the package is missing
    print(f"validate.py: missing Python module ({e.name}); install with: {INSTALL}", file=sys.stderr)
    sys.exit(3)


def renderer():
    """The command that renders a kustomization directory, or exits 3 naming how to get one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    print(
        "validate.py: neither `kustomize` nor `kubectl` (which embeds kustomize) is on PATH; "
        "install it with: bash deploy/k8s/install-tools.sh",
        file=sys.stderr,
    )
    sys.exit(3)


def kustomizations():
    """Every directory under deploy/k8s holding a kustomization.yaml, base first. Components
    (kind: Component) are skipped: they render only inside the overlays that use them."""
    dirs = sorted(p.parent for p in HERE.rglob("kustomization.yaml")
                  if not re.search(r"(?m)^kind:\s*Component\s*$", p.read_text()))
    return sorted(dirs, key=lambda d: (d.name != "base", str(d)))


def api_file_part(api_version):
    """`rabbitmq.com/v1beta1` -> `rabbitmq-v1beta1`, `v1` -> `v1` (kubernetes-validate's naming)."""
    return re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)


class Validators:
    """Compiled validators per (Kubernetes version, kind, apiVersion), built once."""

    def __init__(self, version):
        self.version = version
        versions = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
        if not versions or kv.major_minor(version) > kv.major_minor(kv.latest_version()):
            print(f"validate.py: kubernetes-validate has no schemas for Kubernetes {version}; "
                  f"it knows {kv.all_versions()[0]}..{kv.latest_version()}", file=sys.stderr)
            sys.exit(3)
        self.schema_dir = importlib_resources.files("kubernetes_validate").joinpath(
            "kubernetes-json-schema", f"v{versions[-1]}-local-strict")
        definitions = json.loads(self.schema_dir.joinpath("_definitions.json").read_text())
        self.registry = Resource.from_contents(definitions) @ Registry()
        self.cache = {}

    def get(self, kind, api_version):
        key = (kind, api_version)
        if key not in self.cache:
            name = f"{kind.lower()}-{api_file_part(api_version)}.json"
            custom = HERE / "schemas" / name
            if custom.is_file():
                schema, origin = json.loads(custom.read_text()), f"deploy/k8s/schemas/{name}"
            else:
                f = self.schema_dir.joinpath(name)
                if not f.is_file():
                    self.cache[key] = None
                    return None
                schema, origin = json.loads(f.read_text()), f"Kubernetes {self.version}"
            validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
            self.cache[key] = (validator, origin)
        return self.cache[key]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="*", type=pathlib.Path,
                        help="kustomization directories (default: every one under deploy/k8s)")
    parser.add_argument("--kubernetes-version", action="append", dest="versions",
                        help="repeatable; default 1.30 and the newest known")
    parser.add_argument("--render-dir", type=pathlib.Path,
                        help="also write each rendering to DIR/<name>.yaml")
    args = parser.parse_args()
    versions = args.versions or ["1.30", kv.major_minor(kv.latest_version())]
    validators = [Validators(v) for v in versions]
    render = renderer()
    dirs = [d.resolve() for d in args.dirs] or kustomizations()

    errors = 0
    for d in dirs:
        label = d.relative_to(HERE.parent.parent) if d.is_relative_to(HERE.parent.parent) else d
        out = subprocess.run(render + [str(d)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"FAIL {label}: {' '.join(render)} failed:\n{out.stderr.strip()}")
            return 2
        if args.render_dir:
            args.render_dir.mkdir(parents=True, exist_ok=True)
            (args.render_dir / f"{d.name}.yaml").write_text(out.stdout)
        docs = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
        found_errors = {}  # message -> schemas that reported it, in order
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            for v in validators:
                found = v.get(doc.get("kind", ""), doc.get("apiVersion", ""))
                if found is None:
                    msg = (f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} "
                           "(add one to deploy/k8s/schemas/)")
                    found_errors.setdefault(msg, [])
                    continue
                validator, origin = found
                for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                    path = ".".join(str(p) for p in e.path) or "(root)"
                    origins = found_errors.setdefault(f"{name}: {path}: {e.message}", [])
                    if origin not in origins:
                        origins.append(origin)
        for msg, origins in found_errors.items():
            print(f"ERROR {label}: {msg}" + (f" [{', '.join(origins)}]" if origins else ""))
        here = len(found_errors)
        errors += here
        status = "ok  " if here == 0 else "FAIL"
        print(f"{status} {label}: {len(docs)} resources against Kubernetes {', '.join(versions)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
