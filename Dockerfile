# syntax=docker/dockerfile:1
# Build: docker build -t attachment-gateway:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin attachment-gateway \
 && cp target/release/attachment-gateway /attachment-gateway

# Distroless: CA certificates, a non-root user, no shell.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /attachment-gateway /usr/local/bin/attachment-gateway
USER 65532:65532
EXPOSE 50051 9090
ENV ATTACHMENT_GATEWAY_LISTEN=0.0.0.0:50051 \
    ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN=0.0.0.0:9090 \
    ATTACHMENT_GATEWAY_LOG__FORMAT=json \
    MIMALLOC_ARENA_EAGER_COMMIT=0
ENTRYPOINT ["/usr/local/bin/attachment-gateway"]
