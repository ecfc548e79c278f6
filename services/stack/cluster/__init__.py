"""A real single-node Kubernetes cluster for the tests and for people (dev tool; no service imports it).

    python -m services.stack.cluster build        packages, binaries, images (once; cached outside the repo)
    python -m services.stack.cluster up           start it; prints `export KUBECONFIG=...`
    python -m services.stack.cluster down         stop it, restore the host
    python -m services.stack.cluster status | kubeconfig | image | kafka-image

From Python (tests)::

    from services.stack.cluster import running
    with running(tmp_path / "cluster") as c:
        c.kubeconfig, c.api_url, c.token, c.load_image(archive), c.dump_diagnostics()

See README.md next to this file.
"""

from services.stack.cluster.cluster import Cluster, ClusterError, PreflightError, running

__all__ = ["Cluster", "ClusterError", "PreflightError", "running"]
