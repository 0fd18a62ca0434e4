#!/usr/bin/env bash
# Build (and optionally push) dipflow's image with the pins of deploy/versions.env.
#   deploy/docker/build.sh            # build $DIPFLOW_IMAGE
#   deploy/docker/build.sh --push     # build and push it (log in to the registry first)
# Extra arguments go to `docker build` unchanged, e.g. --build-arg EXTRAS=s3,gcs or --platform linux/amd64.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
set -a; . "${root}/deploy/versions.env"; set +a

push=0
args=()
for a in "$@"; do
    if [[ "$a" == "--push" ]]; then push=1; else args+=("$a"); fi
done

DOCKER_BUILDKIT=1 docker build \
    -f "${root}/deploy/docker/Dockerfile" \
    --build-arg "CUDA_BASE_IMAGE=${CUDA_BASE_IMAGE}" \
    --build-arg "UV_IMAGE=${UV_IMAGE}" \
    -t "${DIPFLOW_IMAGE}" \
    ${args[@]+"${args[@]}"} \
    "${root}"

if (( push )); then
    docker push "${DIPFLOW_IMAGE}"
fi
echo "${DIPFLOW_IMAGE}"
