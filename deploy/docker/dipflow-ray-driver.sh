#!/usr/bin/env bash
# Run a command as a Ray driver *inside* the cluster, from a pod that is not a Ray node yet (a Prefect flow-run pod).
#
# Ray drivers attach to a raylet on their own machine (`ray.init(address="auto")`); Ray Client (ray://) is the
# remote alternative that Ray's docs discourage for long batch jobs. So this pod first joins the cluster as a node
# that offers no resources: no task or actor is ever placed here, the GPU workers do the work, and the driver
# gets a local raylet and object store. Then it runs the command with RAY_ADDRESS=auto.
#
#   RAY_HEAD_ADDRESS   the head's GCS address, e.g. dipflow-head-svc:6379 (set by the work-pool template)
#   RAY_AUTH_MODE      token, with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH from a Kubernetes Secret
#
# Without RAY_HEAD_ADDRESS the command runs unchanged (the flow then starts or finds Ray on its own).
set -euo pipefail

if [[ -n "${RAY_HEAD_ADDRESS:-}" ]]; then
    # --num-cpus=0/--num-gpus=0: a driver-only node; --block is not used, so `ray start` returns once the node is up.
    ray start --address="${RAY_HEAD_ADDRESS}" --num-cpus=0 --num-gpus=0 --disable-usage-stats
    export RAY_ADDRESS=auto
    # Leave the cluster cleanly when the command ends; `ray stop` here only sees this container's processes.
    trap 'ray stop --grace-period 10 >/dev/null 2>&1 || true' EXIT
fi

"$@"
