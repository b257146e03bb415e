# One image for the three services (gateway, scorer, drift-job) and fraudctl.
# Build: docker build -t fraudstream .   Run: docker run fraudstream scorer --help
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p gateway -p scorer -p drift-job -p fraudctl

# ONNX Runtime from the pinned PyPI wheel, checked against the same digest as scripts/setup.sh.
FROM python:3.11-slim-bookworm AS onnxruntime
ARG ORT_VERSION=1.32.0
ARG ORT_SO_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f
RUN pip download --no-deps --only-binary=:all: "onnxruntime==${ORT_VERSION}" -d /wheel \
 && python -c "import zipfile,glob; zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]).extract('onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}', '/ort')" \
 && echo "${ORT_SO_SHA256}  /ort/onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}" | sha256sum -c -

FROM debian:bookworm-slim
# libssl3: TLS and SASL/SCRAM to Kafka, rediss:// to Redis.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/gateway /src/target/release/scorer /src/target/release/drift-job /src/target/release/fraudctl /usr/local/bin/
# The scorer finds the library next to its executable.
COPY --from=onnxruntime /ort/onnxruntime/capi/libonnxruntime.so.1.32.0 /usr/local/bin/libonnxruntime.so
COPY model/ /opt/fraudstream/model/
ENV MODEL_CARD=/opt/fraudstream/model/model_card.json \
    MODEL_CARDS=/opt/fraudstream/model/model_card.json \
    RUST_LOG=info
USER 65534
