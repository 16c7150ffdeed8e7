# The `fleet` binary in a small image; compose.yaml runs one container per worker kind.
#
#   docker build -t fleet-workers .
#   docker run --rm fleet-workers fleet --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds;
# the binary is copied out because the target mount is not part of the layer.
# Only the `fleet` binary: the test kit and the benchmark (`testkit/`, `bench/`)
# are workspace members for development and never built here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p fleet-workers --bin fleet \
    && install -m 0755 target/release/fleet /usr/local/bin/fleet

FROM debian:bookworm-slim
# ca-certificates: TLS to managed brokers and search clusters; curl: the health check.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fleet
COPY --from=build /usr/local/bin/fleet /usr/local/bin/fleet
USER fleet
ENV FLEET_WORKER_METRICS_LISTEN=0.0.0.0:9464
EXPOSE 9464
# Liveness only: /livez answers while the process serves. /readyz (every
# dependency reachable, every queue consumed) is for readiness and alerts: a
# search outage must not restart the workers, the retry path absorbs it.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9464/livez || exit 1
STOPSIGNAL SIGTERM
CMD ["fleet", "--help"]
