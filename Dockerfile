# One image with the three service binaries (and credentials, which makes
# the stack's credentials and the script of the services' Kafka users and
# ACLs, and postgres-access, which makes their PostgreSQL roles and
# databases); docker-compose.yml picks one per container with `command:`.
# The cache mounts need BuildKit (Docker Compose
# v2 uses it) or podman's builder (what `docker-compose` 1.29 reaches on a
# machine set up by `cargo xtask engine up`).

# librdkafka is compiled from source by rdkafka-sys (configure + make, which
# the rust image has).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins -p payments-service -p service-a -p service-b -p kafka-ops -p service-kit \
    && mkdir -p /out \
    && cp target/release/payments-service target/release/service-a target/release/service-b \
          target/release/credentials target/release/postgres-access /out/

FROM debian:bookworm-slim
# curl: for the compose health checks. libssl3: librdkafka's SCRAM login.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 app
COPY --from=build /out/ /usr/local/bin/
USER app
ENV RUST_LOG=info,librdkafka=warn
