"""The command line of each control-plane process. Flags follow controller-runtime's envtest and kubeadm,
tuned for one fast local machine: loopback only, no leader election, short node-monitor periods."""

from __future__ import annotations

from collections.abc import Mapping

from .layout import Layout
from .pki import FRONT_PROXY_CLIENT, Pki

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/16"  # room for thousands of Services (benchmarks create 200+)
POD_CIDR = "10.244.0.0/16"  # kwok hands fake pod IPs out of this; kept apart from the service range
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
# kwok renews each node's Lease every quarter of this; the node lifecycle controller's grace period
# matches it.
NODE_LEASE_SECONDS = 40


def etcd(layout: Layout, ports: Mapping[str, int]) -> list[str]:
    client = f"http://127.0.0.1:{ports['etcd']}"
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        str(layout.binary("etcd")),
        "--name=devcluster",
        f"--data-dir={layout.etcd_data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devcluster={peer}",
        "--unsafe-no-fsync",  # a throwaway dev store: durability is not worth the disk latency
        "--log-level=warn",
    ]


def kube_apiserver(layout: Layout, ports: Mapping[str, int], pki: Pki) -> list[str]:
    return [
        str(layout.binary("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports['kube-apiserver']}",
        f"--cert-dir={layout.pki_dir}",
        f"--tls-cert-file={pki.serving_cert}",
        f"--tls-private-key-file={pki.serving_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.service_account_public_key}",
        f"--service-account-signing-key-file={pki.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--allow-privileged=true",
        # Request-header authentication, so the controller-manager and scheduler can delegate authn (and
        # aggregated API servers would work).
        f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT.user}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.client_cert(FRONT_PROXY_CLIENT)}",
        f"--proxy-client-key-file={pki.client_key(FRONT_PROXY_CLIENT)}",
        # The `kubernetes` Service cannot point at a loopback address; nothing in the cluster needs it.
        "--endpoint-reconciler-type=none",
        # Node addresses are loopback only (InternalIP); the default order tries Hostname first, a DNS lookup
        # that would leave this machine.
        "--kubelet-preferred-address-types=InternalIP",
        # Who did what (metadata only): the RBAC test compares the operator's requests with the chart's grants.
        f"--audit-policy-file={layout.audit_policy}",
        f"--audit-log-path={layout.audit_log}",
        "--audit-log-maxsize=100",  # MB; one rotated file is kept beside it (audit-<time>.log)
        "--audit-log-maxbackup=1",
    ]


def kube_controller_manager(layout: Layout, ports: Mapping[str, int], pki: Pki) -> list[str]:
    kubeconfig = layout.component_kubeconfig("kube-controller-manager")
    return [
        str(layout.binary("kube-controller-manager")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-controller-manager']}",
        "--controllers=*",  # every default controller, garbage collector and namespace controller included
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.service_account_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        "--leader-elect=false",
        "--node-monitor-period=2s",
        f"--node-monitor-grace-period={NODE_LEASE_SECONDS}s",
    ]


def kube_scheduler(layout: Layout, ports: Mapping[str, int]) -> list[str]:
    kubeconfig = layout.component_kubeconfig("kube-scheduler")
    return [
        str(layout.binary("kube-scheduler")),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-scheduler']}",
        "--leader-elect=false",
    ]


def kwok(layout: Layout, ports: Mapping[str, int]) -> list[str]:
    # --manage-single-node conflicts with the selector flags; the annotation selector is what lets a
    # real node (never here, but on a shared cluster) stay untouched.
    return [
        str(layout.binary("kwok")),
        f"--kubeconfig={layout.component_kubeconfig('kwok')}",
        f"--config={layout.kwok_stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr={POD_CIDR}",
        "--node-ip=127.0.0.1",
        f"--server-address=127.0.0.1:{ports['kwok']}",
    ]
