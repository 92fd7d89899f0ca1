#!/bin/sh
# Init container: copy the models named in models.config from object storage
# into the pod's model volume, then check the layout, so that model-server
# starts with every configured model on local disk.
#
# Optional (components/sync-models); by default the server reads object
# storage itself. Contract (see deploy/README.md, "Model repository"):
#   ${MODEL_REPOSITORY_URL}/<dir>/<version>/saved_model.pb   (or .pbtxt)
#   ${MODEL_REPOSITORY_URL}/<dir>/<version>/variables/...
#   ${MODEL_REPOSITORY_URL}/<dir>/<version>/assets/...        (optional)
# is copied to ${MODEL_DIR}/<dir>/<version>/... for every base_path
# "${MODEL_DIR}/<dir>" in ${MODEL_CONFIG_FILE}. <version> is a positive integer,
# as TF Serving requires. MODEL_REPOSITORY_URL is s3://bucket/prefix,
# gs://bucket/prefix, az://container/prefix or a local path; credentials come
# from the environment (IRSA / Workload Identity / RCLONE_* variables).
set -eu

: "${MODEL_REPOSITORY_URL:?set MODEL_REPOSITORY_URL, e.g. s3://my-bucket/models}"
MODEL_DIR="${MODEL_DIR:-/models}"
MODEL_DIR="${MODEL_DIR%/}"
MODEL_CONFIG_FILE="${MODEL_CONFIG_FILE:-/etc/model-server/models.config}"
RCLONE="${RCLONE:-rclone}"
RCLONE_FLAGS="${RCLONE_FLAGS:---fast-list --transfers=8 --checkers=16 --retries=5}"

repo="${MODEL_REPOSITORY_URL%/}"
case "$repo" in
    s3://*) src=":s3:${repo#s3://}" ;;
    gs://*) src=":gcs:${repo#gs://}" ;;
    az://*) src=":azureblob:${repo#az://}" ;;
    *://*) echo "sync-models: unsupported MODEL_REPOSITORY_URL scheme: $repo" >&2; exit 2 ;;
    *) src="$repo" ;;
esac

# base_path values, one per line (single or double quotes, any layout).
base_paths="$(grep -o "base_path:[[:space:]]*[\"'][^\"']*[\"']" "$MODEL_CONFIG_FILE" \
    | sed "s/^base_path:[[:space:]]*[\"']//; s/[\"']\$//")" || true
if [ -z "$base_paths" ]; then
    echo "sync-models: no base_path in $MODEL_CONFIG_FILE" >&2
    exit 2
fi

status=0
for base_path in $base_paths; do
    dir="${base_path#"$MODEL_DIR"/}"
    case "$dir" in
        "$base_path" | "" | */* | .*)
            echo "sync-models: base_path $base_path is not $MODEL_DIR/<dir>" >&2
            exit 2 ;;
    esac
    echo "sync-models: $src/$dir -> $MODEL_DIR/$dir"
    # shellcheck disable=SC2086 # RCLONE_FLAGS is a list of flags
    "$RCLONE" sync $RCLONE_FLAGS "$src/$dir" "$MODEL_DIR/$dir"

    versions=0
    for v in "$MODEL_DIR/$dir"/*/; do
        v="${v%/}"
        name="${v##*/}"
        case "$name" in
            "*" | *[!0-9]*) continue ;;  # not a version directory
        esac
        if [ -f "$v/saved_model.pb" ] || [ -f "$v/saved_model.pbtxt" ]; then
            versions=$((versions + 1))
        else
            echo "sync-models: $v has no saved_model.pb(txt)" >&2
            status=1
        fi
    done
    if [ "$versions" -eq 0 ]; then
        echo "sync-models: no version <n>/saved_model.pb under $src/$dir" >&2
        status=1
    else
        echo "sync-models: $dir: $versions version(s)"
    fi
done
exit "$status"
