"""Readiness probe of a TorchServe container: exit 0 only when the model's minimum workers are READY.

Runs inside the TorchServe image (standard library only): `python3 model_ready.py NAME VERSION MIN_WORKERS
[MANAGEMENT_URL]`. TorchServe's /ping says Healthy while a model's workers crash, so it is no readiness
signal; the management API lists each worker's status.
"""

import json
import sys
import urllib.error
import urllib.request


def ready_workers(description: list) -> int:
    return sum(1 for model in description for worker in model.get("workers", []) if worker.get("status") == "READY")


def main(argv: list) -> int:
    name, version, min_workers = argv[1], argv[2], int(argv[3])
    base = argv[4] if len(argv) > 4 else "http://127.0.0.1:8081"
    try:
        with urllib.request.urlopen(f"{base}/models/{name}/{version}", timeout=2) as response:
            description = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"model {name} version {version} not described by TorchServe: {error}")
        return 1
    ready = ready_workers(description)
    if ready < min_workers:
        print(f"model {name} version {version}: {ready} of {min_workers} workers READY")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
