# syntax=docker/dockerfile:1
# The one Hoard image: /usr/local/bin/{hoard, hoard-webhook, restore-wait}.
#   docker build -t ghcr.io/hoard-dev/hoard:0.1.0 .
# The manifests run hoard-webhook (Deployment), `hoard agent` (DaemonSet) and
# restore-wait (the init-container the webhook injects into held pods).

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Caches speed up rebuilds; --locked builds exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hoard -p webhook -p restore-wait \
 && mkdir -p /out \
 && install -m 0755 target/release/hoard target/release/hoard-webhook target/release/restore-wait /out/

# distroless "cc": glibc and libgcc only (ring and zstd link against libc),
# no shell, no package manager. Runs as non-root by default; the agent's
# DaemonSet asks for uid 0 explicitly because it must read every pod's files.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/hoard"]
