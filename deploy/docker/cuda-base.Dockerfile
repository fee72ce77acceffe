# A CUDA base for the GPU variant of the trafficcast image: NVIDIA's CUDA "base" image (the
# environment the NVIDIA container toolkit reads: NVIDIA_VISIBLE_DEVICES and the driver
# capabilities) plus python3 and venv. The CUDA runtime, cuDNN and NCCL themselves come with
# PyTorch's CUDA wheel (its nvidia-* dependencies), so a "runtime" or "cudnn" image would only
# add a second copy of them. The host needs the NVIDIA driver and the container toolkit.
#
#   docker build -f deploy/docker/cuda-base.Dockerfile -t trafficcast-cuda-base .
#   docker build --build-arg BASE_IMAGE=trafficcast-cuda-base \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#     --build-arg TORCH_VARIANT=cuda -t trafficcast:gpu .
#
# Not built on the project's machines (no registry access, no driver): see the README's
# "Docker" section for what is and isn't verified.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${CUDA_IMAGE}

# DL3008: the CUDA image's Ubuntu release fixes these packages' versions; pinning exact Debian
# revisions would break the build at every Ubuntu security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
