#!/bin/sh
# A serving container's entry point: fetch the engine the channel's release has for this node's GPUs, then exec the
# server command given as arguments, which reads DEST/current. Needs `pip install 'enginebuild[store]'` in the
# image; nothing else of enginebuild. E.g. with TensorRT-LLM 1.2.x in the image:
#
#   entrypoint.sh trtllm-serve /models/llama-3-8b/current --backend tensorrt --tokenizer /tokenizer
#
#   ENGINE_STORE    s3://bucket/prefix or a mounted path        (required)
#   ENGINE_CHANNEL  canary | prod | ...                         (default: prod)
#   ENGINE_MODEL    the model's name in models.yaml              (required)
#   ENGINE_DEST     where engines are kept (a volume)            (default: /models/$ENGINE_MODEL)
#   ENGINE_TRUST    the public key releases must be signed with  (default: /etc/enginebuild/engine-signing.pub)
#
# A node that no engine of the release fits stops here with exit 2 and one line saying what the channel has and what
# the node is; a refused (unsigned, edited) release or engine stops it the same way. The server is never started on
# a half-fetched or unverified engine: `current` changes only after the pull verified every file.
set -eu
: "${ENGINE_STORE:?set ENGINE_STORE}" "${ENGINE_MODEL:?set ENGINE_MODEL}"
DEST="${ENGINE_DEST:-/models/$ENGINE_MODEL}"
enginebuild fetch --store "$ENGINE_STORE" --channel "${ENGINE_CHANNEL:-prod}" --model "$ENGINE_MODEL" \
    --dest "$DEST" --trust "${ENGINE_TRUST:-/etc/enginebuild/engine-signing.pub}"
exec "$@"
