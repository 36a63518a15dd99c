"""Command line: `python -m canaria run` starts the operator; `python -m canaria crd` prints the CRD."""

from __future__ import annotations

import argparse
import os
import sys

import yaml


def print_crd() -> None:
    from canaria.schema import custom_resource_definition

    sys.stdout.write(yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=120))


def run(namespaces: list[str], liveness: str | None) -> None:
    import kopf

    from canaria import leader, logs
    from canaria.handlers import options_from, serve_metrics  # importing the module registers the handlers

    options = options_from(os.environ)
    logs.configure(options.log_level, options.log_format)
    serve_metrics(options)  # every replica, a standby too: a scrape target that never answers would look down
    election = leader.settings_from(os.environ)
    if election.enabled:  # of several replicas only the Lease's holder runs Kopf; the others wait here
        leader.lead(election, liveness)
    kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=True, liveness_endpoint=liveness)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="canaria", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the operator")
    run_parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    run_parser.add_argument(
        "--liveness", default=None, help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    commands.add_parser("crd", help="print the ModelDeployment CustomResourceDefinition")
    args = parser.parse_args(argv)
    if args.command == "crd":
        print_crd()
    else:
        run(args.namespace, args.liveness)


if __name__ == "__main__":
    main()
