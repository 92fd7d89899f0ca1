#!/bin/sh
# Container entrypoint for model-server, compatible with the one in
# tensorflow/serving images:
#
#   docker run -e MODEL_NAME=half_plus_two -v "$PWD/models:/models" IMAGE
#       -> model-server --port=8500 --rest_api_port=8501
#              --model_name=half_plus_two --model_base_path=/models/half_plus_two
#
# * MODEL_NAME (default "model") and MODEL_BASE_PATH (default "/models") select
#   the single model served from ${MODEL_BASE_PATH}/${MODEL_NAME}.
# * Arguments are appended after the defaults, so flags given on the command
#   line win (the server keeps the last value of a repeated flag):
#       docker run IMAGE --enable_batching --rest_api_port=9001
# * With --model_config_file the config file names the models, so
#   --model_name/--model_base_path are not added at all.
# * If the first argument is not a flag it is run as a command instead
#   (docker run -it IMAGE sh), as official images do.
#
# POSIX sh on purpose: no bash in minimal bases. `exec` keeps the server as the
# direct child of the init process so SIGTERM (graceful drain) reaches it.
set -eu

if [ "$#" -gt 0 ]; then
    case "$1" in
        -*) ;;                 # a flag: serve with it
        *) exec "$@" ;;        # a command: run it instead of the server
    esac
fi

MODEL_NAME="${MODEL_NAME:-model}"
MODEL_BASE_PATH="${MODEL_BASE_PATH:-/models}"
# "/models/" and "/models" both give "/models/<name>".
MODEL_BASE_PATH="${MODEL_BASE_PATH%/}"

has_model_config_file=false
for arg in "$@"; do
    case "$arg" in
        --model_config_file=* | --model_config_file | -model_config_file=* | -model_config_file)
            has_model_config_file=true ;;
    esac
done

if [ "$has_model_config_file" = true ]; then
    set -- --port=8500 --rest_api_port=8501 "$@"
else
    set -- --port=8500 --rest_api_port=8501 \
        "--model_name=${MODEL_NAME}" \
        "--model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME}" \
        "$@"
fi

exec model-server "$@"
