# syntax=docker/dockerfile:1
# The portcullis container image: the README's release build in a Rust image, the binary
# alone in a distroless runtime (glibc, CA certificates, no shell, no package manager).
#
#   docker build -t portcullis:0.1.0 .
#   docker run --rm --read-only -p 8080:8080 \
#     -v "$PWD/config/quickstart.toml:/etc/portcullis/portcullis.toml:ro" portcullis:0.1.0
#
# Runs as the numeric user 65532 (distroless "nonroot"), writes nothing (a read-only root
# filesystem works), needs no capability (ports above 1024).

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
# The release build of the README (without the demo provider and sample app).
RUN cargo build --release --locked --no-default-features \
    && install -D -m 0755 target/release/portcullis /out/portcullis

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="An authenticating reverse proxy: OAuth 2.0 / OpenID Connect in front of unmodified apps and APIs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/portcullis /usr/local/bin/portcullis
USER 65532:65532
# 8080: the proxy (server.listen); 9090: the admin listener (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/portcullis.toml"]
