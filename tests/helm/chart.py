"""Lints or renders a Helm chart with Helm's own engine (PyPI helm-python-sdk, which wraps
Helm's Go SDK and needs no cluster), for tests/common/helm.rs.

    chart.py lint CHART --kube-version 1.37.0 [--values FILE]... [--set-json JSON]...
    chart.py render CHART --kube-version 1.37.0 [--values FILE]... [--set-json JSON]...

Values files and JSON documents are merged in order, maps key by key, as `helm -f` merges
them. Prints one JSON object on stdout:

    lint    {"messages": [{"severity": 0-3, "path": ..., "error": ...}], ...}
    render  {"manifests": {"keygate/templates/deployment.yaml": "...", ...}}
    either  {"error": "...", "kind": "HelmValuesError"} with exit status 3, when Helm refuses
            the chart or the values (a schema violation, a template's `fail`).
"""

import argparse
import json
import pathlib
import sys

import helm_python as helm

RELEASE = "keygate"
NAMESPACE = "keygate"


def merge(base, top):
    """`top` over `base`: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(top, dict):
        merged = dict(base)
        for key, value in top.items():
            merged[key] = merge(base.get(key), value)
        return merged
    return top


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["lint", "render"])
    parser.add_argument("chart", type=pathlib.Path)
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("--values", action="append", default=[], type=pathlib.Path)
    parser.add_argument("--set-json", action="append", default=[], dest="set_json")
    args = parser.parse_args()

    values = {}
    for path in args.values:
        values = merge(values, helm.values_from_yaml(path.read_text()))
    for document in args.set_json:
        values = merge(values, json.loads(document))

    try:
        if args.action == "lint":
            result = helm.lint(
                args.chart,
                values,
                strict=True,
                namespace=NAMESPACE,
                kube_version="v" + args.kube_version,
            )
        else:
            # Like `helm template`: the values are checked against the schema first.
            with helm.Chart.load(args.chart) as chart:
                manifests = chart.render(
                    values, name=RELEASE, namespace=NAMESPACE, is_install=True
                )
            result = {"manifests": manifests}
    except helm.HelmError as error:
        json.dump({"error": str(error), "kind": type(error).__name__}, sys.stdout)
        return 3
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
